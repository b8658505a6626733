//! Tensors as the Open Inference Protocol (KServe v2, Triton) carries them,
//! and the inference requests and responses that hold them: read from their
//! JSON form or the binary tensor data extension (a JSON header, then each
//! binary tensor's bytes in order, `Inference-Header-Content-Length` giving the
//! header's length), and written in either.
//!
//! A [`Tensor`]'s data is kept in one canonical form whatever it came in:
//! little-endian, row-major, each element at its datatype's size (BOOL one
//! byte, 0 or 1; BYTES each element as a 4-byte little-endian length then its
//! bytes). So the JSON and the binary form of one tensor are the same tensor,
//! with the same digest ([`Tensor::digest`]), and share a cache entry.
//!
//! Between the gateway and a worker a tensor request or reply is always the
//! binary form, with the header length in the NATS header
//! [`INFERENCE_HEADER_CONTENT_LENGTH`].

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

/// The header (HTTP and NATS alike) giving the length of the JSON header of a
/// body in the binary form.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";
/// Input and output parameter: the tensor's data is binary, this many bytes.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Requested output parameter: return this output as binary data.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: return every output as binary data (unless an output
/// says otherwise).
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// The most elements a tensor may declare; a shape beyond it is refused before
/// anything is allocated.
pub const MAX_ELEMENTS: u64 = 1 << 30;

/// The datatypes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub const ALL: [Self; 14] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Bf16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Bf16 => "BF16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|datatype| datatype.as_str() == name)
    }

    /// The size of one element; `None` for BYTES, whose elements vary.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
            Self::Bytes => return None,
        })
    }
}

/// What is wrong with a request or response, naming the tensor at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor {tensor:?}: {problem}")]
    Tensor { tensor: String, problem: String },
    #[error("{0}")]
    Body(String),
}

fn tensor_error(tensor: &str, problem: impl Into<String>) -> TensorError {
    TensorError::Tensor {
        tensor: tensor.to_owned(),
        problem: problem.into(),
    }
}

/// A tensor, its data in canonical form (see the module's documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    /// Its parameters but `binary_data_size`, which only says how it came.
    pub parameters: Map<String, Value>,
    pub data: Vec<u8>,
}

/// How many elements `shape` holds, refusing more than [`MAX_ELEMENTS`].
fn elements_of(name: &str, shape: &[u64]) -> Result<u64, TensorError> {
    shape
        .iter()
        .try_fold(1u64, |count, &dim| count.checked_mul(dim))
        .filter(|&count| count <= MAX_ELEMENTS)
        .ok_or_else(|| {
            tensor_error(
                name,
                format!("shape {shape:?} holds more than {MAX_ELEMENTS} elements"),
            )
        })
}

fn flatten<'a>(value: &'a Value, into: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, into)),
        other => into.push(other),
    }
}

impl Tensor {
    /// How many elements its shape holds.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// A tensor from its JSON `data` (flat or nested, row-major).
    pub fn from_json(
        name: &str,
        datatype: Datatype,
        shape: Vec<u64>,
        parameters: Map<String, Value>,
        data: &Value,
    ) -> Result<Self, TensorError> {
        let count = elements_of(name, &shape)?;
        let mut values = Vec::new();
        flatten(data, &mut values);
        if values.len() as u64 != count {
            return Err(tensor_error(
                name,
                format!(
                    "shape {shape:?} holds {count} elements, but `data` has {}",
                    values.len()
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(values.len() * datatype.size().unwrap_or(8));
        for (index, value) in values.iter().enumerate() {
            write_json_element(datatype, value, &mut bytes).map_err(|expected| {
                tensor_error(name, format!("element {index} is {value}, not {expected}"))
            })?;
        }
        Ok(Self {
            name: name.to_owned(),
            datatype,
            shape,
            parameters,
            data: bytes,
        })
    }

    /// A tensor from its binary data, checked against its shape.
    pub fn from_binary(
        name: &str,
        datatype: Datatype,
        shape: Vec<u64>,
        parameters: Map<String, Value>,
        data: &[u8],
    ) -> Result<Self, TensorError> {
        let count = elements_of(name, &shape)?;
        match datatype.size() {
            Some(size) => {
                let expected = count * size as u64;
                if data.len() as u64 != expected {
                    return Err(tensor_error(
                        name,
                        format!(
                            "shape {shape:?} of {} takes {expected} bytes, but {} were given",
                            datatype.as_str(),
                            data.len()
                        ),
                    ));
                }
                if datatype == Datatype::Bool && data.iter().any(|&byte| byte > 1) {
                    return Err(tensor_error(name, "a BOOL element is a byte 0 or 1"));
                }
            }
            None => {
                let mut at = 0usize;
                for index in 0..count {
                    let length = data
                        .get(at..at + 4)
                        .map(|prefix| {
                            u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize
                        })
                        .ok_or_else(|| {
                            tensor_error(name, format!("the data ends before element {index}"))
                        })?;
                    at += 4;
                    if data.len() - at < length {
                        return Err(tensor_error(
                            name,
                            format!("element {index} runs past the data"),
                        ));
                    }
                    at += length;
                }
                if at != data.len() {
                    return Err(tensor_error(
                        name,
                        format!(
                            "{} bytes are left after its {count} elements",
                            data.len() - at
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            name: name.to_owned(),
            datatype,
            shape,
            parameters,
            data: data.to_vec(),
        })
    }

    /// Its data as a flat JSON array; `None` if an element cannot be written
    /// in JSON (a float that is not finite).
    pub fn json_data(&self) -> Option<Value> {
        let mut values = Vec::with_capacity(self.elements() as usize);
        match self.datatype.size() {
            Some(size) => {
                for element in self.data.chunks_exact(size) {
                    values.push(json_element(self.datatype, element)?);
                }
            }
            None => {
                let mut at = 0;
                while at + 4 <= self.data.len() {
                    let length =
                        u32::from_le_bytes(self.data[at..at + 4].try_into().ok()?) as usize;
                    at += 4;
                    let bytes = self.data.get(at..at + length)?;
                    at += length;
                    values.push(Value::String(String::from_utf8_lossy(bytes).into_owned()));
                }
            }
        }
        Some(Value::Array(values))
    }

    /// The SHA-256 of its datatype, shape and data: what the cache key holds
    /// of it.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.datatype.as_str());
        for dim in &self.shape {
            hasher.update(dim.to_le_bytes());
        }
        hasher.update(&self.data);
        hex::encode(hasher.finalize())
    }

    /// Its JSON header object: name, datatype, shape and parameters, with
    /// `binary_data_size` when `binary`, else its `data`.
    fn header(&self, binary: bool) -> Result<Value, TensorError> {
        let mut parameters = self.parameters.clone();
        let mut object = Map::new();
        object.insert("name".into(), Value::String(self.name.clone()));
        object.insert(
            "datatype".into(),
            Value::String(self.datatype.as_str().into()),
        );
        object.insert("shape".into(), json!(self.shape));
        if binary {
            parameters.insert(BINARY_DATA_SIZE.into(), json!(self.data.len()));
        } else {
            let data = self.json_data().ok_or_else(|| {
                tensor_error(
                    &self.name,
                    "holds a value JSON cannot carry (NaN or infinity); ask for it as binary data",
                )
            })?;
            object.insert("data".into(), data);
        }
        if !parameters.is_empty() {
            object.insert("parameters".into(), Value::Object(parameters));
        }
        Ok(Value::Object(object))
    }
}

/// Writes one JSON element of `datatype`; on a mismatch, what was expected.
fn write_json_element(
    datatype: Datatype,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    macro_rules! integer {
        ($type:ty) => {{
            let number = value
                .as_i64()
                .and_then(|n| <$type>::try_from(n).ok())
                .or_else(|| value.as_u64().and_then(|n| <$type>::try_from(n).ok()))
                .ok_or(concat!("an integer in the range of ", stringify!($type)))?;
            out.extend_from_slice(&number.to_le_bytes());
        }};
    }
    let float = || value.as_f64().ok_or("a number");
    match datatype {
        Datatype::Bool => out.push(u8::from(value.as_bool().ok_or("true or false")?)),
        Datatype::Uint8 => integer!(u8),
        Datatype::Uint16 => integer!(u16),
        Datatype::Uint32 => integer!(u32),
        Datatype::Uint64 => integer!(u64),
        Datatype::Int8 => integer!(i8),
        Datatype::Int16 => integer!(i16),
        Datatype::Int32 => integer!(i32),
        Datatype::Int64 => integer!(i64),
        Datatype::Fp16 => out.extend_from_slice(&f16::from_f64(float()?).to_le_bytes()),
        Datatype::Bf16 => out.extend_from_slice(&bf16::from_f64(float()?).to_le_bytes()),
        Datatype::Fp32 => out.extend_from_slice(&(float()? as f32).to_le_bytes()),
        Datatype::Fp64 => out.extend_from_slice(&float()?.to_le_bytes()),
        Datatype::Bytes => {
            let text = value.as_str().ok_or("a string")?;
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    Ok(())
}

/// A float with the fewest digits that read back as the same value of its
/// own width (0.1 for an f32 0.1, not 0.10000000149011612).
fn float_number(text: String) -> Option<Value> {
    text.parse::<Number>().ok().map(Value::Number)
}

/// One element of `datatype` from its little-endian bytes, as JSON.
fn json_element(datatype: Datatype, bytes: &[u8]) -> Option<Value> {
    macro_rules! le {
        ($type:ty) => {
            <$type>::from_le_bytes(bytes.try_into().ok()?)
        };
    }
    Some(match datatype {
        Datatype::Bool => Value::Bool(bytes[0] != 0),
        Datatype::Uint8 => json!(bytes[0]),
        Datatype::Uint16 => json!(le!(u16)),
        Datatype::Uint32 => json!(le!(u32)),
        Datatype::Uint64 => json!(le!(u64)),
        Datatype::Int8 => json!(le!(i8)),
        Datatype::Int16 => json!(le!(i16)),
        Datatype::Int32 => json!(le!(i32)),
        Datatype::Int64 => json!(le!(i64)),
        Datatype::Fp16 => {
            let value = f16::from_le_bytes(bytes.try_into().ok()?);
            if !value.is_finite() {
                return None;
            }
            float_number(value.to_string())?
        }
        Datatype::Bf16 => {
            let value = bf16::from_le_bytes(bytes.try_into().ok()?);
            if !value.is_finite() {
                return None;
            }
            float_number(value.to_string())?
        }
        Datatype::Fp32 => {
            let value = le!(f32);
            if !value.is_finite() {
                return None;
            }
            float_number(value.to_string())?
        }
        Datatype::Fp64 => {
            let value = le!(f64);
            if !value.is_finite() {
                return None;
            }
            float_number(value.to_string())?
        }
        Datatype::Bytes => return None,
    })
}

/// An output a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// Its parameters but `binary_data`, which only says how it goes back.
    pub parameters: Map<String, Value>,
    /// Whether it goes back as binary data.
    pub binary: Option<bool>,
}

/// An inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub id: Option<String>,
    /// Its parameters but `binary_data_output`.
    pub parameters: Map<String, Value>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: every output as binary data, unless it says.
    pub binary_output: bool,
}

/// The JSON header and the binary part of a body; `header_length` from
/// [`INFERENCE_HEADER_CONTENT_LENGTH`], none for a JSON body.
fn split(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<(Map<String, Value>, &[u8]), TensorError> {
    let (header, binary) = match header_length {
        Some(length) if length > body.len() => {
            return Err(TensorError::Body(format!(
                "{INFERENCE_HEADER_CONTENT_LENGTH} is {length}, but the body has {} bytes",
                body.len()
            )));
        }
        Some(length) => body.split_at(length),
        None => (body, &[][..]),
    };
    match serde_json::from_slice(header) {
        Ok(Value::Object(header)) => Ok((header, binary)),
        Ok(_) => Err(TensorError::Body(
            "the JSON header must be an object".into(),
        )),
        Err(err) => Err(TensorError::Body(format!(
            "the JSON header is not valid JSON: {err}"
        ))),
    }
}

fn parameters_of(
    object: &Map<String, Value>,
    what: &str,
) -> Result<Map<String, Value>, TensorError> {
    match object.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(parameters)) => Ok(parameters.clone()),
        Some(_) => Err(TensorError::Body(format!(
            "{what}: `parameters` must be an object"
        ))),
    }
}

/// The tensors of a header's `inputs` or `outputs`, binary ones taken from
/// `binary` in order; every byte of it must be used.
fn tensors(
    list: Option<&Value>,
    field: &str,
    mut binary: &[u8],
) -> Result<Vec<Tensor>, TensorError> {
    let items = match list {
        Some(Value::Array(items)) => items,
        _ => {
            return Err(TensorError::Body(format!(
                "`{field}` must be an array of tensors"
            )));
        }
    };
    let mut tensors = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(TensorError::Body(format!(
                "{field}[{index}] must be an object"
            )));
        };
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| TensorError::Body(format!("{field}[{index}] has no `name`")))?;
        let datatype = item
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| tensor_error(name, "has no `datatype`"))?;
        let datatype = Datatype::parse(datatype).ok_or_else(|| {
            tensor_error(
                name,
                format!("datatype {datatype:?} is not one of the protocol's"),
            )
        })?;
        let shape = item
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| dims.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| tensor_error(name, "`shape` must be an array of whole numbers"))?;
        let mut parameters = parameters_of(item, name)?;
        let tensor = match parameters.remove(BINARY_DATA_SIZE) {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| {
                    tensor_error(name, "`binary_data_size` must be a whole number")
                })?;
                if size > binary.len() as u64 {
                    return Err(tensor_error(
                        name,
                        format!(
                            "`binary_data_size` is {size}, but only {} bytes of binary data are left",
                            binary.len()
                        ),
                    ));
                }
                let (data, rest) = binary.split_at(size as usize);
                binary = rest;
                Tensor::from_binary(name, datatype, shape, parameters, data)?
            }
            None => {
                let data = item.get("data").ok_or_else(|| {
                    tensor_error(name, "has neither `data` nor `binary_data_size`")
                })?;
                Tensor::from_json(name, datatype, shape, parameters, data)?
            }
        };
        tensors.push(tensor);
    }
    if !binary.is_empty() {
        return Err(TensorError::Body(format!(
            "{} bytes of binary data are left after the tensors that declare them",
            binary.len()
        )));
    }
    Ok(tensors)
}

/// Writes `header` then each binary tensor's data: the binary form, and its
/// header's length (`None` when no tensor is binary: a plain JSON body).
fn write_body(header: &Value, binary: &[&Tensor]) -> (Vec<u8>, Option<usize>) {
    let mut body = serde_json::to_vec(header).expect("a JSON value serializes");
    if binary.is_empty() {
        return (body, None);
    }
    let header_length = body.len();
    for tensor in binary {
        body.extend_from_slice(&tensor.data);
    }
    (body, Some(header_length))
}

impl InferenceRequest {
    /// Reads a request body (`header_length`: see [`split`]).
    pub fn parse(body: &[u8], header_length: Option<usize>) -> Result<Self, TensorError> {
        let (mut header, binary) = split(body, header_length)?;
        let id = match header.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id),
            Some(_) => return Err(TensorError::Body("`id` must be a string".into())),
        };
        let mut parameters = parameters_of(&header, "the request")?;
        let binary_output = match parameters.remove(BINARY_DATA_OUTPUT) {
            None => false,
            Some(Value::Bool(binary)) => binary,
            Some(_) => {
                return Err(TensorError::Body(format!(
                    "`{BINARY_DATA_OUTPUT}` must be true or false"
                )));
            }
        };
        let inputs = tensors(header.get("inputs"), "inputs", binary)?;
        if inputs.is_empty() {
            return Err(TensorError::Body(
                "`inputs` must name at least one tensor".into(),
            ));
        }
        let mut names: Vec<&str> = inputs.iter().map(|input| input.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(tensor_error(twice[0], "is given twice"));
        }
        let outputs = match header.get("outputs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
                        TensorError::Body(format!("outputs[{index}] has no `name`"))
                    })?;
                    let mut parameters =
                        parameters_of(item.as_object().unwrap_or(&Map::new()), name)?;
                    let binary = match parameters.remove(BINARY_DATA) {
                        None => None,
                        Some(Value::Bool(binary)) => Some(binary),
                        Some(_) => {
                            return Err(tensor_error(name, "`binary_data` must be true or false"));
                        }
                    };
                    Ok(RequestedOutput {
                        name: name.to_owned(),
                        parameters,
                        binary,
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TensorError::Body("`outputs` must be an array".into())),
        };
        Ok(Self {
            id,
            parameters,
            inputs,
            outputs,
            binary_output,
        })
    }

    /// What the answer depends on, for the cache key: each input's name,
    /// datatype, shape and data digest (sorted by name: their order cannot
    /// change the answer), the outputs asked for and the parameters, but
    /// neither `id` nor how tensors travel.
    pub fn key_material(&self, version: Option<&str>) -> Value {
        let mut inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|input| {
                json!({
                    "name": input.name,
                    "datatype": input.datatype.as_str(),
                    "shape": input.shape,
                    "digest": input.digest(),
                    "parameters": input.parameters,
                })
            })
            .collect();
        inputs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let mut outputs: Vec<Value> = self
            .outputs
            .iter()
            .map(|output| json!({"name": output.name, "parameters": output.parameters}))
            .collect();
        outputs.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({"oip": {
            "version": version,
            "inputs": inputs,
            "outputs": outputs,
            "parameters": self.parameters,
        }})
    }

    /// The request as a worker gets it: every input binary, no `id`, the
    /// outputs without how they travel; and its header's length.
    pub fn for_worker(&self) -> (Vec<u8>, usize) {
        let inputs: Vec<Value> = self
            .inputs
            .iter()
            .map(|input| input.header(true).expect("binary headers always write"))
            .collect();
        let mut header = Map::new();
        header.insert("inputs".into(), Value::Array(inputs));
        if !self.outputs.is_empty() {
            let outputs = self
                .outputs
                .iter()
                .map(|output| {
                    let mut object = Map::new();
                    object.insert("name".into(), Value::String(output.name.clone()));
                    if !output.parameters.is_empty() {
                        object.insert(
                            "parameters".into(),
                            Value::Object(output.parameters.clone()),
                        );
                    }
                    Value::Object(object)
                })
                .collect();
            header.insert("outputs".into(), Value::Array(outputs));
        }
        if !self.parameters.is_empty() {
            header.insert("parameters".into(), Value::Object(self.parameters.clone()));
        }
        let binary: Vec<&Tensor> = self.inputs.iter().collect();
        let (body, header_length) = write_body(&Value::Object(header), &binary);
        (body, header_length.unwrap_or(0))
    }

    /// Whether the output `name` goes back as binary data.
    pub fn wants_binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|output| output.name == name)
            .and_then(|output| output.binary)
            .unwrap_or(self.binary_output)
    }
}

/// An inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: Option<String>,
    pub parameters: Map<String, Value>,
    pub outputs: Vec<Tensor>,
}

/// The length of the JSON header at the start of `body`, the binary form's
/// header: where its first JSON value ends.
pub fn header_length_of(body: &[u8]) -> Option<usize> {
    let mut values =
        serde_json::Deserializer::from_slice(body).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some(values.byte_offset())
}

impl InferenceResponse {
    /// Reads a response body (a worker's reply, an upstream server's answer).
    pub fn parse(body: &[u8], header_length: Option<usize>) -> Result<Self, TensorError> {
        let (header, binary) = split(body, header_length)?;
        let text = |field: &str| header.get(field).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            model_name: text("model_name").unwrap_or_default(),
            model_version: text("model_version"),
            id: text("id"),
            parameters: parameters_of(&header, "the response")?,
            outputs: tensors(header.get("outputs"), "outputs", binary)?,
        })
    }

    /// The body, each output binary where `binary` says so; and the header's
    /// length if any output is binary.
    pub fn write(
        &self,
        binary: impl Fn(&Tensor) -> bool,
    ) -> Result<(Vec<u8>, Option<usize>), TensorError> {
        let mut header = Map::new();
        header.insert("model_name".into(), Value::String(self.model_name.clone()));
        if let Some(version) = &self.model_version {
            header.insert("model_version".into(), Value::String(version.clone()));
        }
        if let Some(id) = &self.id {
            header.insert("id".into(), Value::String(id.clone()));
        }
        if !self.parameters.is_empty() {
            header.insert("parameters".into(), Value::Object(self.parameters.clone()));
        }
        let mut outputs = Vec::with_capacity(self.outputs.len());
        let mut binaries = Vec::new();
        for output in &self.outputs {
            let as_binary = binary(output);
            outputs.push(output.header(as_binary)?);
            if as_binary {
                binaries.push(output);
            }
        }
        header.insert("outputs".into(), Value::Array(outputs));
        Ok(write_body(&Value::Object(header), &binaries))
    }
}

/// One tensor a model takes or gives: its shape with `-1` for a dimension of
/// any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// The tensors a model takes and gives, as its workers declare them (endpoint
/// metadata [`TENSORS_METADATA`](crate::headers::TENSORS_METADATA)): what the
/// protocol's model metadata answers, and what a request is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSignature {
    /// The framework, as the protocol names it (`onnxruntime_onnx`, ...).
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

fn shape_fits(declared: &[i64], given: &[u64]) -> bool {
    declared.len() == given.len()
        && declared
            .iter()
            .zip(given)
            .all(|(&declared, &given)| declared < 0 || declared as u64 == given)
}

impl TensorSignature {
    /// Whether `request` gives every input the model takes, with its datatype
    /// and shape, and nothing else, and asks only for outputs it gives.
    pub fn check(&self, request: &InferenceRequest) -> Result<(), TensorError> {
        let names = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|spec| spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for spec in &self.inputs {
            let Some(input) = request.inputs.iter().find(|input| input.name == spec.name) else {
                return Err(tensor_error(
                    &spec.name,
                    "is missing: the model takes this input",
                ));
            };
            if input.datatype.as_str() != spec.datatype {
                return Err(tensor_error(
                    &spec.name,
                    format!(
                        "the model takes {}, not {}",
                        spec.datatype,
                        input.datatype.as_str()
                    ),
                ));
            }
            if !shape_fits(&spec.shape, &input.shape) {
                return Err(tensor_error(
                    &spec.name,
                    format!(
                        "the model takes shape {:?} (-1: any size), not {:?}",
                        spec.shape, input.shape
                    ),
                ));
            }
        }
        if let Some(extra) = request
            .inputs
            .iter()
            .find(|input| !self.inputs.iter().any(|spec| spec.name == input.name))
        {
            return Err(tensor_error(
                &extra.name,
                format!(
                    "the model has no such input (its inputs: {})",
                    names(&self.inputs)
                ),
            ));
        }
        if let Some(unknown) = request
            .outputs
            .iter()
            .find(|output| !self.outputs.iter().any(|spec| spec.name == output.name))
        {
            return Err(tensor_error(
                &unknown.name,
                format!(
                    "the model has no such output (its outputs: {})",
                    names(&self.outputs)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &[u8], header: Option<usize>) -> Result<InferenceRequest, TensorError> {
        InferenceRequest::parse(body, header)
    }

    #[test]
    fn the_json_and_the_binary_form_of_a_tensor_are_one_tensor() {
        let json = br#"{"id":"1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1.5,2],[3,4]]}]}"#;
        let from_json = request(json, None).unwrap();
        let header = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        for value in [1.5f32, 2.0, 3.0, 4.0] {
            body.extend_from_slice(&value.to_le_bytes());
        }
        let from_binary = request(&body, Some(header.len())).unwrap();
        assert_eq!(from_json.inputs, from_binary.inputs);
        assert_eq!(from_json.key_material(None), from_binary.key_material(None));
        assert_eq!(from_json.id.as_deref(), Some("1"));
        assert!(from_binary.binary_output && !from_json.binary_output);
    }

    #[test]
    fn every_datatype_reads_from_json_and_writes_back() {
        let cases = [
            ("BOOL", json!([true, false])),
            ("UINT8", json!([0, 255])),
            ("UINT16", json!([1, 65535])),
            ("UINT32", json!([1, 4294967295u64])),
            ("UINT64", json!([1, 18446744073709551615u64])),
            ("INT8", json!([-128, 127])),
            ("INT16", json!([-2, 3])),
            ("INT32", json!([-2, 3])),
            ("INT64", json!([-9223372036854775807i64, 3])),
            ("FP16", json!([0.5, -2.0])),
            ("BF16", json!([0.5, -2.0])),
            ("FP32", json!([0.1, -2.5])),
            ("FP64", json!([0.1, -2.5])),
            ("BYTES", json!(["ab", ""])),
        ];
        for (datatype, data) in cases {
            let datatype = Datatype::parse(datatype).unwrap();
            let tensor = Tensor::from_json("t", datatype, vec![2], Map::new(), &data).unwrap();
            let back = tensor.json_data().unwrap();
            let numbers = |value: &Value| -> Vec<String> {
                value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_string().trim_end_matches(".0").to_owned())
                    .collect()
            };
            assert_eq!(numbers(&back), numbers(&data), "{datatype:?}");
            let binary =
                Tensor::from_binary("t", datatype, vec![2], Map::new(), &tensor.data).unwrap();
            assert_eq!(binary, tensor);
        }
    }

    #[test]
    fn bad_tensors_are_refused_naming_the_tensor() {
        for (body, header, expected) in [
            (&br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#[..], None, "tensor \"x\": shape [3] holds 3 elements, but `data` has 2"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#, None, "tensor \"x\": datatype \"FP8\""),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}"#, None, "tensor \"x\": element 0 is 256"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#, None, "not an integer"),
            (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"INT32","data":[1]}]}"#, None, "`shape` must be"),
            (br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"INT8","data":[]}]}"#, None, "more than"),
            (br#"{"inputs":[]}"#, None, "at least one"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]},{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}"#, None, "given twice"),
            (br#"{}"#, Some(100), "the body has 2 bytes"),
        ] {
            let err = request(body, header).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
        // A binary part shorter, longer or otherwise than its tensors declare.
        for (header, binary, expected) in [
            (&br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","parameters":{"binary_data_size":2}}]}"#[..], &b"X"[..], "only 1 bytes"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","parameters":{"binary_data_size":1}}]}"#, b"XY", "1 bytes of binary data are left"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT16","parameters":{"binary_data_size":2}}]}"#, b"XY", "takes 4 bytes, but 2"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#, b"\x05\0\0\0ab", "element 0 runs past"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}}]}"#, b"\x01\x02", "a byte 0 or 1"),
        ] {
            let body = [header, binary].concat();
            let err = request(&body, Some(header.len())).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn the_key_leaves_out_the_id_and_how_tensors_travel() {
        let a = request(br#"{"id":"a","inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]},{"name":"y","shape":[1],"datatype":"INT8","data":[2]}],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}"#, None).unwrap();
        let b = request(br#"{"id":"b","inputs":[{"name":"y","shape":[1],"datatype":"INT8","data":[2]},{"name":"x","shape":[1],"datatype":"INT8","data":[1]}],"outputs":[{"name":"o"}]}"#, None).unwrap();
        assert_eq!(a.key_material(Some("1")), b.key_material(Some("1")));
        assert_ne!(a.key_material(Some("1")), a.key_material(Some("2")));
        let other = request(br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]},{"name":"y","shape":[1],"datatype":"INT8","data":[3]}],"outputs":[{"name":"o"}]}"#, None).unwrap();
        assert_ne!(a.key_material(None), other.key_material(None));
        let reshaped = request(br#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"INT8","data":[1]},{"name":"y","shape":[1],"datatype":"INT8","data":[2]}],"outputs":[{"name":"o"}]}"#, None).unwrap();
        assert_ne!(a.key_material(None), reshaped.key_material(None));
    }

    #[test]
    fn a_worker_gets_binary_tensors_and_a_response_writes_either_form() {
        let original = request(br#"{"id":"7","inputs":[{"name":"x","shape":[2],"datatype":"BYTES","data":["hi","there"]}],"outputs":[{"name":"o","parameters":{"binary_data":true,"top_k":3}}]}"#, None).unwrap();
        let (body, header) = original.for_worker();
        let seen = request(&body, Some(header)).unwrap();
        assert_eq!(seen.inputs, original.inputs);
        assert_eq!(seen.id, None);
        assert_eq!(seen.outputs[0].parameters["top_k"], 3);
        let response = InferenceResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: Some("7".into()),
            parameters: Map::new(),
            outputs: vec![
                Tensor::from_json("o", Datatype::Fp32, vec![2], Map::new(), &json!([0.25, 1]))
                    .unwrap(),
            ],
        };
        let (json_body, none) = response.write(|_| false).unwrap();
        assert_eq!(none, None);
        assert_eq!(
            InferenceResponse::parse(&json_body, None).unwrap(),
            response
        );
        let (binary_body, header) = response.write(|_| true).unwrap();
        assert_eq!(binary_body.len(), header.unwrap() + 8);
        assert_eq!(header_length_of(&binary_body), header);
        assert_eq!(
            InferenceResponse::parse(&binary_body, header).unwrap(),
            response
        );
        let nan = Tensor::from_binary(
            "n",
            Datatype::Fp32,
            vec![1],
            Map::new(),
            &f32::NAN.to_le_bytes(),
        )
        .unwrap();
        let with_nan = InferenceResponse {
            outputs: vec![nan],
            ..response
        };
        assert!(
            with_nan
                .write(|_| false)
                .unwrap_err()
                .to_string()
                .contains("binary data")
        );
        assert!(with_nan.write(|_| true).is_ok());
    }

    #[test]
    fn a_request_is_checked_against_what_the_model_declares() {
        let spec = |name: &str, datatype: &str, shape: &[i64]| TensorSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        };
        let signature = TensorSignature {
            platform: "onnxruntime_onnx".into(),
            inputs: vec![spec("x", "FP32", &[-1, 2])],
            outputs: vec![spec("y", "FP32", &[-1, 1])],
        };
        let fits = request(br#"{"inputs":[{"name":"x","shape":[3,2],"datatype":"FP32","data":[1,2,3,4,5,6]}],"outputs":[{"name":"y"}]}"#, None).unwrap();
        assert_eq!(signature.check(&fits), Ok(()));
        for (body, expected) in [
            (&br#"{"inputs":[{"name":"z","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#[..], "tensor \"x\": is missing"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1,2]}]}"#, "the model takes FP32, not FP64"),
            (br#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[1,2]}]}"#, "takes shape [-1, 2]"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]},{"name":"w","shape":[1],"datatype":"FP32","data":[1]}]}"#, "tensor \"w\": the model has no such input"),
            (br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"q"}]}"#, "no such output (its outputs: y)"),
        ] {
            let err = signature.check(&request(body, None).unwrap()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
