//! The `clean` processor: turns a validated randomuser.me record into the flat
//! [`CleanRecord`]. Text is NFC with white space collapsed; names are title case in any
//! script; the email is lower case; phones keep digits and a leading `+`; the postcode is
//! text whatever its JSON type; dates are dates. Cleaning never fails: what validation let
//! through and is absent becomes empty or null.

use std::any::Any;

use serde::Deserialize;
use serde_json::Value;
use weir_topology::pipeline::{BuildContext, Built, Processor};
use weir_topology::{Body, CleanRecord, DataType, Envelope, NodeConfig, OutputSpec};

use crate::lookup;
use crate::text::{clean_text, phone_digits, title_case};
use crate::validate::parse_date;

/// Flattens and cleans validated randomuser.me records.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanConfig {}

impl NodeConfig for CleanConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Valid]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: None,
            data_type: DataType::Clean,
        }]
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Built, String> {
        Ok(Built::Processor(Box::new(Clean)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The running clean processor.
pub struct Clean;

fn text_at(v: &Value, path: &str) -> Option<String> {
    let s = match lookup(v, path)? {
        Value::String(s) => clean_text(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// Cleans one validated record.
pub fn clean(v: &Value, source: weir_topology::record::SourceCoordinates) -> CleanRecord {
    let first_name = text_at(v, "name.first")
        .map(|s| title_case(&s))
        .unwrap_or_default();
    let last_name = text_at(v, "name.last")
        .map(|s| title_case(&s))
        .unwrap_or_default();
    let full_name = clean_text(&format!("{first_name} {last_name}"));
    let street_address = {
        let number = text_at(v, "location.street.number");
        let name = text_at(v, "location.street.name");
        match (number, name) {
            (Some(n), Some(s)) => Some(format!("{n} {s}")),
            (n, s) => n.or(s),
        }
    };
    let registered_at = text_at(v, "registered.date").and_then(|s| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|d| {
                d.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .or_else(|| parse_date(&s).map(|d| format!("{d}T00:00:00.000Z")))
    });
    let age = match lookup(v, "dob.age") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    CleanRecord {
        user_uuid: text_at(v, "login.uuid").map(|s| s.to_lowercase()),
        title: text_at(v, "name.title").map(|s| title_case(&s)),
        first_name,
        last_name,
        full_name,
        gender: text_at(v, "gender").map(|s| s.to_lowercase()),
        email: text_at(v, "email")
            .map(|s| s.to_lowercase())
            .unwrap_or_default(),
        street_address,
        city: text_at(v, "location.city").unwrap_or_default(),
        state: text_at(v, "location.state"),
        country: text_at(v, "location.country").unwrap_or_default(),
        postcode: text_at(v, "location.postcode"),
        phone: text_at(v, "phone")
            .map(|s| phone_digits(&s))
            .filter(|s| !s.is_empty()),
        cell: text_at(v, "cell")
            .map(|s| phone_digits(&s))
            .filter(|s| !s.is_empty()),
        dob: text_at(v, "dob.date")
            .and_then(|s| parse_date(&s))
            .map(|d| d.to_string()),
        age,
        registered_at,
        picture_thumbnail: text_at(v, "picture.thumbnail"),
        nat: text_at(v, "nat").map(|s| s.to_uppercase()),
        source,
    }
}

impl Processor for Clean {
    fn process(&mut self, mut record: Envelope, out: &mut Vec<(Option<&'static str>, Envelope)>) {
        let cleaned = match &record.body {
            Body::Valid(v) | Body::Json(v) => clean(v, record.source_coordinates()),
            _ => {
                // the graph check makes this unreachable; never lose the record
                out.push((None, record));
                return;
            }
        };
        record.body = Body::Clean(Box::new(cleaned));
        out.push((None, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_topology::record::SourceCoordinates;

    fn src() -> SourceCoordinates {
        SourceCoordinates {
            topic: "raw".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn cleans_a_randomuser_record() {
        let raw = json!({
            "gender": "female",
            "name": {"title": "Ms", "first": "  зоряна ", "last": "o'neil-smith"},
            "location": {"street": {"number": 4432, "name": "  Main   Street "}, "city": "Kyiv",
                         "state": "Kyivska", "country": "Ukraine", "postcode": 48105},
            "email": "Zoryana.ONeil@Example.COM",
            "login": {"uuid": "2D4B4B9E-1C1E-4A5E-9A8E-0A0B0C0D0E0F"},
            "dob": {"date": "1993-07-20T09:44:18.674Z", "age": 31},
            "registered": {"date": "2015-06-21T11:04:38.419+02:00", "age": 9},
            "phone": "(097) 555-12-34", "cell": "+380 97 555 1234",
            "picture": {"thumbnail": "https://randomuser.me/api/portraits/thumb/women/1.jpg"},
            "nat": "ua"
        });
        let c = clean(&raw, src());
        assert_eq!(c.first_name, "Зоряна");
        assert_eq!(c.last_name, "O'Neil-Smith");
        assert_eq!(c.full_name, "Зоряна O'Neil-Smith");
        assert_eq!(c.email, "zoryana.oneil@example.com");
        assert_eq!(c.street_address.as_deref(), Some("4432 Main Street"));
        assert_eq!(c.postcode.as_deref(), Some("48105"));
        assert_eq!(c.phone.as_deref(), Some("0975551234"));
        assert_eq!(c.cell.as_deref(), Some("+380975551234"));
        assert_eq!(c.dob.as_deref(), Some("1993-07-20"));
        assert_eq!(c.registered_at.as_deref(), Some("2015-06-21T09:04:38.419Z"));
        assert_eq!(
            c.user_uuid.as_deref(),
            Some("2d4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0f")
        );
        assert_eq!(c.nat.as_deref(), Some("UA"));
        assert_eq!(c.age, Some(31));
        assert_eq!(c.source, src());
    }

    #[test]
    fn absent_optional_fields_become_null() {
        let c = clean(&json!({"name": {"first": "a", "last": "b"}}), src());
        assert_eq!(c.full_name, "A B");
        assert_eq!(c.phone, None);
        assert_eq!(c.street_address, None);
        assert_eq!(c.postcode, None);
    }
}
