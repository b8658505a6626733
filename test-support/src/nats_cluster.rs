//! A real NATS cluster for tests: three `nats-server`s routed to each other on
//! loopback, each with its own client port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{ServerProcess, binary, free_port};

/// How long the servers may take to route to each other.
const MESH_TIMEOUT: Duration = Duration::from_secs(15);

/// Three routed `nats-server`s.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ServerProcess>,
    /// Each node's monitoring port, to see its routes.
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts three nodes and waits until each routes to the other two.
    pub fn start() -> Self {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = (0..3)
            .map(|index| {
                let routes = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .map(|(_, port)| format!("nats://127.0.0.1:{port}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let route_port = route_ports[index];
                let monitor_port = monitor_ports[index];
                ServerProcess::start(binary("nats-server", "NATS_SERVER_BIN"), move |port| {
                    vec![
                        "-a".into(),
                        "127.0.0.1".into(),
                        "-p".into(),
                        port.to_string(),
                        "-m".into(),
                        monitor_port.to_string(),
                        "--cluster_name".into(),
                        "test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{route_port}"),
                        "--routes".into(),
                        routes.clone(),
                    ]
                })
            })
            .collect();
        let cluster = Self {
            nodes,
            monitor_ports,
        };
        let started = Instant::now();
        while !(0..3).all(|index| cluster.routes_of(index) == Some(2)) {
            assert!(
                started.elapsed() < MESH_TIMEOUT,
                "the NATS servers did not route to each other within {MESH_TIMEOUT:?}"
            );
            sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Every node's client URL, comma-separated, for `--nats-url`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `index` alone.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// The client port of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].port
    }

    /// Kills node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// The names of the clients connected to node `index` (`/connz`).
    pub fn connection_names(&self, index: usize) -> Vec<String> {
        let Some(body) = http_get(self.monitor_ports[index], "/connz") else {
            return Vec::new();
        };
        let Ok(connz) = serde_json::from_str::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|connection| connection["name"].as_str().map(str::to_owned))
            .collect()
    }

    fn routes_of(&self, index: usize) -> Option<u64> {
        let body = http_get(self.monitor_ports[index], "/routez")?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?["num_routes"].as_u64()
    }
}

/// The body of `GET path` on the loopback `port`, if it answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}
