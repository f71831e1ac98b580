//! Validation errors that name the offending field (`training.learning_rate must be > 0, got
//! -1`), shared by every layer that checks user input: job specs, training arguments, request
//! bodies. A leaf: imports nothing from the crate.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`training.learning_rate`, `tasks[3].data.text`).
    pub field: String,
    /// What is wrong, worded to follow the field name.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why typed JSON could not be read: malformed JSON, or a well-formed document whose field
/// does not fit the type.
#[derive(Debug)]
pub enum JsonError {
    Syntax(String),
    Field(FieldError),
}

/// Deserialises JSON into `T`; a type error names the field by its path (`training.lr`,
/// `tasks[2]`), a missing field by its would-be path, anything else at the top is `body`.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json reports some shape errors as syntax (an enum given as a number reads as
        // "expected value"): a document that parses is a field error, named by its path.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        if (inner.is_syntax() || inner.is_eof()) && !well_formed {
            return JsonError::Syntax(inner.to_string());
        }
        let msg = inner.to_string();
        let field = match msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            Some(missing) if path == "." => missing.to_string(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "body".to_string(),
            None => path,
        };
        JsonError::Field(FieldError::new(field, msg))
    })
}

/// Deserialises an already parsed JSON document into `T`; errors name the field as
/// [`from_json`] does (the whole document is known to be well-formed, so every error is one
/// of shape, named by its path).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let field = match msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            Some(missing) if path == "." => missing.to_string(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "body".to_string(),
            None => path,
        };
        FieldError::new(field, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        rate: f64,
        list: Vec<u8>,
    }

    fn field(json: &str) -> String {
        match from_json::<Outer>(json.as_bytes()) {
            Err(JsonError::Field(f)) => f.field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_are_named_by_path() {
        assert_eq!(
            field(r#"{"inner": {"rate": "x", "list": []}}"#),
            "inner.rate"
        );
        assert_eq!(
            field(r#"{"inner": {"rate": 1, "list": [1, -1]}}"#),
            "inner.list[1]"
        );
        assert_eq!(field(r#"{"inner": {"list": []}}"#), "inner.rate");
        assert_eq!(field(r#"{}"#), "inner");
        assert_eq!(field(r#"[]"#), "body");
        assert!(matches!(
            from_json::<Outer>(b"{\"inner\": "),
            Err(JsonError::Syntax(_))
        ));
    }
}
