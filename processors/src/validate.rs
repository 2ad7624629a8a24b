//! The `validate` processor: checks each JSON record against the rules of its config and
//! reports every violation, not only the first. Valid records leave through the default
//! output; invalid ones through `invalid`, each reason a code such as `email.invalid`,
//! `field.missing:name.first` or `field.too_long:location.city`.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use weir_topology::pipeline::{BuildContext, Built, Processor};
use weir_topology::{Body, DataType, Envelope, Failure, NodeConfig, OutputSpec};

use crate::lookup;

/// Checks records against rules; sends failures, with every reason, to `invalid`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Fields (dotted paths) that must be present, non-empty strings.
    #[serde(default)]
    pub required: Vec<String>,
    /// Fields that must be email addresses when present
    /// (`^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$`).
    #[serde(default)]
    pub email: Vec<String>,
    /// Fields that must be dates (RFC 3339 or `YYYY-MM-DD`) when present.
    #[serde(default)]
    pub dates: Vec<String>,
    /// Fields that must be UUIDs when present.
    #[serde(default)]
    pub uuid: Vec<String>,
    /// The JSON type each field must have when present.
    #[serde(default)]
    pub types: BTreeMap<String, FieldType>,
    /// Maximum length in characters of each field when present (match the table columns).
    #[serde(default)]
    pub max_lengths: BTreeMap<String, usize>,
}

/// A JSON type a field may be required to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    /// A string or an integer (randomuser.me's postcode).
    StringOrInteger,
}

impl FieldType {
    fn matches(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Number => v.is_number(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::Object => v.is_object(),
            FieldType::Array => v.is_array(),
            FieldType::StringOrInteger => v.is_string() || v.is_i64() || v.is_u64(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Number => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Object => "an object",
            FieldType::Array => "an array",
            FieldType::StringOrInteger => "a string or an integer",
        }
    }
}

impl NodeConfig for ValidateConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Json]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                name: None,
                data_type: DataType::Valid,
            },
            OutputSpec {
                name: Some("invalid"),
                data_type: DataType::Failed,
            },
        ]
    }

    fn detail(&self) -> String {
        format!(
            "{} required, {} rules",
            self.required.len(),
            self.email.len()
                + self.dates.len()
                + self.uuid.len()
                + self.types.len()
                + self.max_lengths.len()
        )
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, String> {
        Ok(Built::Processor(Box::new(Validate {
            config: self.clone(),
            node: ctx.node.to_owned(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn email_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$").expect("email regex")
    })
}

fn uuid_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
            .expect("uuid regex")
    })
}

/// A date as randomuser.me writes it (RFC 3339) or a plain `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<chrono::NaiveDate> {
    let s = s.trim();
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&chrono::Utc).date_naive())
        .ok()
        .or_else(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
}

/// Shortens a value for a message: at most 60 characters.
fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(60).collect();
    if v.chars().count() > 60 {
        s.push('…');
    }
    format!("{s:?}")
}

/// Fields, whether a text passes, the reason code (ending in `:` to name the field), and
/// what the text must be.
type FormatRule<'a> = (&'a [String], fn(&str) -> bool, &'static str, &'static str);

/// The running validate processor.
pub struct Validate {
    config: ValidateConfig,
    node: String,
}

impl Validate {
    pub fn new(config: ValidateConfig, node: &str) -> Self {
        Self {
            config,
            node: node.to_owned(),
        }
    }

    /// Every violation of `record`, as (reason code, sentence) pairs, in rule order.
    pub fn violations(&self, record: &Value) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if !record.is_object() {
            let kind = match record {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            };
            return vec![(
                "record.not_object".into(),
                format!("the record is {kind}, not a JSON object"),
            )];
        }
        let c = &self.config;
        let mut failed: Vec<&str> = Vec::new();
        for path in &c.required {
            match lookup(record, path) {
                None | Some(Value::Null) => {
                    out.push((
                        format!("field.missing:{path}"),
                        format!("{path} is missing"),
                    ));
                    failed.push(path);
                }
                Some(Value::String(s)) if s.trim().is_empty() => {
                    out.push((format!("field.missing:{path}"), format!("{path} is blank")));
                    failed.push(path);
                }
                Some(Value::String(_)) => {}
                Some(_) => {
                    out.push((
                        format!("field.type:{path}"),
                        format!("{path} must be a string"),
                    ));
                    failed.push(path);
                }
            }
        }
        for (path, ty) in &c.types {
            if failed.contains(&path.as_str()) {
                continue;
            }
            if let Some(v) = lookup(record, path).filter(|v| !v.is_null()) {
                if !ty.matches(v) {
                    out.push((
                        format!("field.type:{path}"),
                        format!("{path} must be {}", ty.name()),
                    ));
                    failed.push(path);
                }
            }
        }
        let present_string = |path: &str, failed: &Vec<&str>| -> Result<Option<String>, ()> {
            if failed.contains(&path) {
                return Ok(None);
            }
            match lookup(record, path) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
                Some(_) => Err(()),
            }
        };
        // format rules: (fields, does the text pass, reason code, what the text must be)
        let rules: [FormatRule; 3] = [
            (
                &c.email,
                |t| email_regex().is_match(t),
                "email.invalid",
                "an email address",
            ),
            (
                &c.dates,
                |t| parse_date(t).is_some(),
                "date.invalid:",
                "a date",
            ),
            (
                &c.uuid,
                |t| uuid_regex().is_match(t),
                "uuid.invalid:",
                "a UUID",
            ),
        ];
        for (paths, passes, code, what) in rules {
            for path in paths {
                match present_string(path, &failed) {
                    Ok(Some(t)) if !passes(&t) => {
                        // codes ending in ':' name the field
                        let reason = match code.strip_suffix(':') {
                            Some(c) => format!("{c}:{path}"),
                            None => code.to_owned(),
                        };
                        out.push((reason, format!("{path} {} is not {what}", shown(&t))));
                    }
                    Err(()) => {
                        out.push((
                            format!("field.type:{path}"),
                            format!("{path} must be a string"),
                        ));
                        failed.push(path);
                    }
                    _ => {}
                }
            }
        }
        for (path, max) in &c.max_lengths {
            if failed.contains(&path.as_str()) {
                continue;
            }
            let len = match lookup(record, path) {
                Some(Value::String(s)) => crate::text::clean_text(s).chars().count(),
                Some(Value::Number(n)) => n.to_string().chars().count(),
                _ => continue,
            };
            if len > *max {
                out.push((
                    format!("field.too_long:{path}"),
                    format!("{path} has {len} characters, more than {max}"),
                ));
            }
        }
        out
    }
}

impl Processor for Validate {
    fn process(&mut self, mut record: Envelope, out: &mut Vec<(Option<&'static str>, Envelope)>) {
        let body = std::mem::replace(&mut record.body, Body::Raw);
        let Body::Json(value) = body else {
            record.body = body;
            out.push((Some("invalid"), record));
            return;
        };
        let violations = self.violations(&value);
        if violations.is_empty() {
            record.body = Body::Valid(value);
            out.push((None, record));
        } else {
            let (reasons, sentences): (Vec<String>, Vec<String>) = violations.into_iter().unzip();
            record.body = Body::Failed(Failure {
                reasons,
                message: sentences.join("; "),
                node: self.node.clone(),
                ..Failure::default()
            });
            out.push((Some("invalid"), record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed() -> Validate {
        let config: ValidateConfig = serde_json::from_value(json!({
            "required": ["name.first", "name.last", "email", "location.city", "location.country"],
            "email": ["email"],
            "dates": ["dob.date", "registered.date"],
            "uuid": ["login.uuid"],
            "types": {"dob.age": "integer", "location.postcode": "string_or_integer"},
            "max_lengths": {"name.first": 5, "location.postcode": 4}
        }))
        .unwrap();
        Validate::new(config, "validate")
    }

    fn codes(v: &Validate, record: Value) -> Vec<String> {
        v.violations(&record).into_iter().map(|(c, _)| c).collect()
    }

    #[test]
    fn a_good_record_has_no_violations() {
        let r = json!({"name": {"first": "Ana", "last": "Li"}, "email": "a@b.co",
            "location": {"city": "X", "country": "Y", "postcode": 1234},
            "dob": {"date": "1990-01-02T03:04:05.000Z", "age": 34},
            "login": {"uuid": "2d4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0f"}});
        assert!(codes(&seed(), r).is_empty());
    }

    #[test]
    fn every_violation_is_reported() {
        let r = json!({"name": {"first": "  ", "last": 7}, "email": "not-an-email",
            "location": {"city": "X", "postcode": 123456},
            "dob": {"date": "yesterday", "age": "34"},
            "login": {"uuid": "nope"}});
        assert_eq!(
            codes(&seed(), r),
            [
                "field.missing:name.first",
                "field.type:name.last",
                "field.missing:location.country",
                "field.type:dob.age",
                "email.invalid",
                "date.invalid:dob.date",
                "uuid.invalid:login.uuid",
                "field.too_long:location.postcode",
            ]
        );
    }

    #[test]
    fn too_long_counts_characters_not_bytes() {
        let ok = json!({"name": {"first": "Зоряна"}});
        assert_eq!(
            codes(&seed(), ok)
                .into_iter()
                .filter(|c| c.starts_with("field.too_long"))
                .collect::<Vec<_>>(),
            ["field.too_long:name.first"]
        );
        let fits = json!({"name": {"first": "Зоря"}});
        assert!(!codes(&seed(), fits)
            .iter()
            .any(|c| c.starts_with("field.too_long")));
    }

    #[test]
    fn non_objects_are_one_violation() {
        for v in [json!([1, 2]), json!("x"), json!(null), json!(3)] {
            assert_eq!(codes(&seed(), v), ["record.not_object"]);
        }
    }
}
