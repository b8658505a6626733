//! The models built into the worker, registered here and nowhere else:
//! [`price`], a stand-in for the original ETH/EUR model; [`echo`], which
//! answers with its input; and two stand-ins of generative models for the
//! demo, the tests and the bench, [`tiny_chat`] (chat and completions,
//! streamed a token at a time) and [`tiny_embed`] (embeddings).

pub mod echo;
pub mod price;
pub mod tiny_chat;
pub mod tiny_embed;

use std::sync::Arc;

use anyhow::bail;
use prediction_contract::ModelName;

use crate::config::WorkerConfig;
use crate::model::Model;

/// A built-in model: its name, and how to make it from the worker's settings.
struct Builtin {
    name: &'static str,
    make: fn(&WorkerConfig) -> Arc<dyn Model>,
}

/// Every built-in model.
const BUILTINS: &[Builtin] = &[
    Builtin {
        name: price::PRICE_MODEL_NAME,
        make: |config| Arc::new(price::PriceModel::new(config.latency())),
    },
    Builtin {
        name: echo::ECHO_MODEL_NAME,
        make: |_| Arc::new(echo::EchoModel::default()),
    },
    Builtin {
        name: tiny_chat::TINY_CHAT_MODEL_NAME,
        make: |config| Arc::new(tiny_chat::TinyChat::new(config.token_interval())),
    },
    Builtin {
        name: tiny_embed::TINY_EMBED_MODEL_NAME,
        make: |_| Arc::new(tiny_embed::TinyEmbed::default()),
    },
];

/// The built-in model called `name`, or an error listing the ones there are.
pub fn builtin_model(name: &ModelName, config: &WorkerConfig) -> anyhow::Result<Arc<dyn Model>> {
    match BUILTINS
        .iter()
        .find(|builtin| builtin.name == name.as_str())
    {
        Some(builtin) => Ok((builtin.make)(config)),
        None => {
            let known: Vec<&str> = BUILTINS.iter().map(|builtin| builtin.name).collect();
            bail!(
                "unknown model {:?}; the built-in models are: {}",
                name.as_str(),
                known.join(", ")
            )
        }
    }
}

/// The built-in models the configuration names.
pub fn builtin_models(config: &WorkerConfig) -> anyhow::Result<Vec<Arc<dyn Model>>> {
    config
        .builtin_model_names()
        .iter()
        .map(|name| builtin_model(name, config))
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn every_builtin_is_made_under_its_own_name() {
        let config = WorkerConfig::try_parse_from(["worker"]).unwrap();
        for builtin in BUILTINS {
            let name = ModelName::parse(builtin.name).unwrap();
            assert_eq!(builtin_model(&name, &config).unwrap().name(), &name);
        }
    }

    #[test]
    fn an_unknown_model_is_refused_with_the_list_of_builtins() {
        let config = WorkerConfig::try_parse_from(["worker"]).unwrap();
        let Err(err) = builtin_model(&ModelName::parse("nope").unwrap(), &config) else {
            panic!("an unknown model was made");
        };
        assert_eq!(
            err.to_string(),
            "unknown model \"nope\"; the built-in models are: price, echo, tiny-chat, tiny-embed"
        );
    }
}
