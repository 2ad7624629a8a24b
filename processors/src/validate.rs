//! The `validate` processor: checks each JSON record against the rules of its config and
//! reports every violation, not only the first. Valid records leave through the default
//! output; invalid ones through `invalid`, each reason a code such as `email.invalid`,
//! `field.missing:name.first` or `field.too_long:location.city`. It reads the fields the
//! source found for its paths ([`weir_topology::fields`]); nothing is allocated unless a
//! record fails.

use serde::Deserialize;
use std::any::Any;
use std::collections::BTreeMap;
use weir_topology::build::{BuildContext, BuildError, Built, Processor};
use weir_topology::fields::{Field, FieldPlan, Parsed};
use weir_topology::{Body, DataType, Envelope, Failure, NodeConfig, OutputSpec};

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
    fn matches(self, v: &Field) -> bool {
        let int = |n: &serde_json::Number| n.is_i64() || n.is_u64();
        match (self, v) {
            (FieldType::String, Field::Str(_)) => true,
            (FieldType::Integer, Field::Number(n)) => int(n),
            (FieldType::Number, Field::Number(_)) => true,
            (FieldType::Boolean, Field::Bool(_)) => true,
            (FieldType::Object, Field::Object) => true,
            (FieldType::Array, Field::Array) => true,
            (FieldType::StringOrInteger, Field::Str(_)) => true,
            (FieldType::StringOrInteger, Field::Number(n)) => int(n),
            _ => false,
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

impl ValidateConfig {
    /// Every path a rule names.
    fn paths(&self) -> impl Iterator<Item = &str> {
        self.required
            .iter()
            .chain(self.types.keys())
            .chain(&self.email)
            .chain(&self.dates)
            .chain(&self.uuid)
            .chain(self.max_lengths.keys())
            .map(String::as_str)
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

    fn fields(&self) -> Vec<String> {
        self.paths().map(str::to_owned).collect()
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built::Processor(Box::new(Validate::new(
            self.clone(),
            ctx.node,
            ctx.plan,
        )?)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$`, matched without a regex engine:
/// one `@` after a non-empty local part of those characters; a domain of letters, digits,
/// dots and hyphens whose last dot is not its first character and is followed by at least
/// two letters to the end.
pub fn is_email(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(at) = b.iter().position(|&c| c == b'@') else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    let local_ok = !local.is_empty() && local.iter().all(|&c| CLASS[c as usize] & LOCAL != 0);
    let domain_ok = domain.iter().all(|&c| CLASS[c as usize] & DOMAIN != 0);
    let tld_ok = domain.iter().rposition(|&c| c == b'.').is_some_and(|dot| {
        dot >= 1 && domain.len() - dot > 2 && domain[dot + 1..].iter().all(u8::is_ascii_alphabetic)
    });
    local_ok && domain_ok && tld_ok
}

/// A byte may be in an email's local part.
const LOCAL: u8 = 1;
/// A byte may be in an email's domain.
const DOMAIN: u8 = 2;
/// A hexadecimal digit.
const HEX: u8 = 4;

/// What each byte may be, by the classes above.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            t[c] |= LOCAL | DOMAIN;
        }
        if matches!(b, b'_' | b'%' | b'+') {
            t[c] |= LOCAL;
        }
        if b.is_ascii_hexdigit() {
            t[c] |= HEX;
        }
        c += 1;
    }
    t
};

/// `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b[8] == b'-'
        && b[13] == b'-'
        && b[18] == b'-'
        && b[23] == b'-'
        // the dashes are not hex: count the hex digits
        && b.iter().fold(0, |n, &c| n + usize::from(CLASS[c as usize] & HEX != 0)) == 32
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// The canonical RFC 3339 times randomuser.me writes, `YYYY-MM-DDTHH:MM:SS[.fff]Z`, read
/// without chrono's general parser: the date and (hour, minute, second, milliseconds), or
/// `None` for anything else (which chrono then reads).
pub fn canonical_time(s: &str) -> Option<(chrono::NaiveDate, (u32, u32, u32, u32))> {
    let ((y, m, d), time) = canonical_parts(s)?;
    Some((chrono::NaiveDate::from_ymd_opt(y as i32, m, d)?, time))
}

/// `canonical_time(s).is_some()`, without making the date.
pub fn is_canonical_time(s: &str) -> bool {
    canonical_parts(s).is_some()
}

/// [`canonical_time`]'s checks: (year, month, day) of a real date and the time.
#[allow(clippy::type_complexity)]
fn canonical_parts(s: &str) -> Option<((u32, u32, u32), (u32, u32, u32, u32))> {
    let b = s.as_bytes();
    let millis = match b.len() {
        24 if b[19] == b'.' && b[23] == b'Z' => digits(&b[20..23])?,
        20 if b[19] == b'Z' => 0,
        _ => return None,
    };
    if b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = canonical_ymd(&b[..10])?;
    let (h, m, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    (h < 24 && m < 60 && sec < 60).then_some((date, (h, m, sec, millis)))
}

/// `YYYY-MM-DD`, a real date.
fn canonical_date(s: &str) -> Option<chrono::NaiveDate> {
    let (y, m, d) = canonical_ymd(s.as_bytes())?;
    chrono::NaiveDate::from_ymd_opt(y as i32, m, d)
}

/// `YYYY-MM-DD` as (year, month, day) when it is a real date of the proleptic Gregorian
/// calendar (as chrono has it; every four-digit year is in its range).
fn canonical_ymd(b: &[u8]) -> Option<(u32, u32, u32)> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&d).then_some((y, m, d))
}

/// A date as randomuser.me writes it (RFC 3339) or a plain `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<chrono::NaiveDate> {
    let s = crate::text::trim(s);
    if let Some((d, _)) = canonical_time(s) {
        return Some(d);
    }
    if let Some(d) = canonical_date(s) {
        return Some(d);
    }
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

/// What a format rule checks: the text passes, and the reason code (ending in `:` to name
/// the field) and what the text must be when it does not.
type Check = (fn(&str) -> bool, &'static str, &'static str);

const EMAIL: Check = (is_email, "email.invalid", "an email address");
const DATE: Check = (
    |t| is_canonical_time(t) || parse_date(t).is_some(),
    "date.invalid:",
    "a date",
);
const UUID: Check = (is_uuid, "uuid.invalid:", "a UUID");

/// The running validate processor: every rule with the index of its path in the plan.
pub struct Validate {
    node: String,
    required: Vec<(String, usize)>,
    /// Sorted by path, as the config's map is.
    types: Vec<(String, usize, FieldType)>,
    /// In rule order: email, dates, UUIDs.
    formats: Vec<(String, usize, Check)>,
    /// Sorted by path.
    max_lengths: Vec<(String, usize, usize)>,
}

impl Validate {
    /// The processor for `config`, its paths looked up in `plan` (which holds them all).
    pub fn new(config: ValidateConfig, node: &str, plan: &FieldPlan) -> Result<Self, BuildError> {
        let at = |path: &String| {
            plan.index(path)
                .map(|i| (path.clone(), i))
                .ok_or_else(|| BuildError::Unread(path.clone()))
        };
        let mut formats = Vec::new();
        for (paths, check) in [
            (&config.email, EMAIL),
            (&config.dates, DATE),
            (&config.uuid, UUID),
        ] {
            for p in paths {
                let (p, i) = at(p)?;
                formats.push((p, i, check));
            }
        }
        Ok(Self {
            node: node.to_owned(),
            required: config.required.iter().map(at).collect::<Result<_, _>>()?,
            types: config
                .types
                .iter()
                .map(|(p, t)| at(p).map(|(p, i)| (p, i, *t)))
                .collect::<Result<_, _>>()?,
            formats,
            max_lengths: config
                .max_lengths
                .iter()
                .map(|(p, m)| at(p).map(|(p, i)| (p, i, *m)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every violation of a record (its fields as read from `text`), as (reason code,
    /// sentence) pairs, in rule order.
    pub fn violations(&self, text: &str, record: &Parsed) -> Vec<(String, String)> {
        if let Some(kind) = record.not_object {
            return vec![(
                "record.not_object".into(),
                format!("the record is {kind}, not a JSON object"),
            )];
        }
        let mut out: Vec<(String, String)> = Vec::new();
        // paths already reported: later rules skip them
        let mut failed: Vec<usize> = Vec::new();
        for (path, i) in &self.required {
            match record.get(text, *i) {
                None | Some(Field::Null) => {
                    out.push((
                        format!("field.missing:{path}"),
                        format!("{path} is missing"),
                    ));
                    failed.push(*i);
                }
                Some(Field::Str(s)) if crate::text::trim(&s).is_empty() => {
                    out.push((format!("field.missing:{path}"), format!("{path} is blank")));
                    failed.push(*i);
                }
                Some(Field::Str(_)) => {}
                Some(_) => {
                    out.push((
                        format!("field.type:{path}"),
                        format!("{path} must be a string"),
                    ));
                    failed.push(*i);
                }
            }
        }
        for (path, i, ty) in &self.types {
            if failed.contains(i) {
                continue;
            }
            match record.get(text, *i) {
                None | Some(Field::Null) => {}
                Some(v) if ty.matches(&v) => {}
                Some(_) => {
                    out.push((
                        format!("field.type:{path}"),
                        format!("{path} must be {}", ty.name()),
                    ));
                    failed.push(*i);
                }
            }
        }
        for (path, i, (passes, code, what)) in &self.formats {
            if failed.contains(i) {
                continue;
            }
            match record.get(text, *i) {
                None | Some(Field::Null) => {}
                Some(Field::Str(s)) => {
                    let t = crate::text::trim(&s);
                    if !passes(t) {
                        // codes ending in ':' name the field
                        let reason = match code.strip_suffix(':') {
                            Some(c) => format!("{c}:{path}"),
                            None => (*code).to_owned(),
                        };
                        out.push((reason, format!("{path} {} is not {what}", shown(t))));
                    }
                }
                Some(_) => {
                    out.push((
                        format!("field.type:{path}"),
                        format!("{path} must be a string"),
                    ));
                    failed.push(*i);
                }
            }
        }
        for (path, i, max) in &self.max_lengths {
            if failed.contains(i) {
                continue;
            }
            let len = match record.text_at(text, *i) {
                // ASCII with no space and no control character: as long as it is
                Some((s, f)) if f.ascii && f.spaceless && f.plain => s.len(),
                // short enough whatever cleaning makes of it (it never triples a length)
                Some((s, _)) if s.len().saturating_mul(crate::text::NFC_GROWTH) <= *max => continue,
                Some((s, _)) => crate::text::clean_len(s),
                None => match record.get(text, *i) {
                    Some(Field::Number(n)) => crate::text::with_number_text(&n, str::len),
                    _ => continue,
                },
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
    fn process(&mut self, record: &mut Envelope) -> Option<&'static str> {
        let violations = match &record.body {
            Body::Json(parsed) => self.violations(&parsed.text, parsed),
            _ => return Some("invalid"),
        };
        if violations.is_empty() {
            if let Body::Json(parsed) = std::mem::replace(&mut record.body, Body::Raw) {
                record.body = Body::Valid(parsed);
            }
            None
        } else {
            let (reasons, sentences): (Vec<String>, Vec<String>) = violations.into_iter().unzip();
            record.set_body(Body::Failed(Failure {
                reasons,
                message: sentences.join("; "),
                node: self.node.clone(),
                ..Failure::default()
            }));
            Some("invalid")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The seed's rules, and the plan that reads their paths.
    fn seed() -> (Validate, FieldPlan) {
        let config: ValidateConfig = serde_json::from_value(json!({
            "required": ["name.first", "name.last", "email", "location.city", "location.country"],
            "email": ["email"],
            "dates": ["dob.date", "registered.date"],
            "uuid": ["login.uuid"],
            "types": {"dob.age": "integer", "location.postcode": "string_or_integer"},
            "max_lengths": {"name.first": 5, "location.postcode": 4}
        }))
        .unwrap();
        let mut plan = FieldPlan::default();
        for p in config.fields() {
            plan.add(&p);
        }
        (Validate::new(config, "validate", &plan).unwrap(), plan)
    }

    fn codes(v: &(Validate, FieldPlan), record: serde_json::Value) -> Vec<String> {
        let text = record.to_string();
        let mut parsed = Parsed::default();
        v.1.read(&text, &mut parsed).unwrap();
        v.0.violations(&text, &parsed)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    #[test]
    fn the_hand_written_matchers_are_the_regexes() {
        let email = regex::Regex::new(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$").unwrap();
        let uuid = regex::Regex::new(
            r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        )
        .unwrap();
        let parts = [
            "", "a", "A.b", "@", ".", "..", "-", "x_y%z+q", "é", "b.co", "b.c", "b.c0", "b.com",
            "b..co", ".co", "co.", "b-c.de", "1.23", "a@b", "@b.co", "ab.CO", " ", "\n",
        ];
        for l in parts {
            for d in parts {
                let s = format!("{l}@{d}");
                assert_eq!(is_email(&s), email.is_match(&s), "{s:?}");
                assert_eq!(is_email(l), email.is_match(l), "{l:?}");
            }
        }
        for s in [
            "2d4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0f",
            "2D4B4B9E-1C1E-4A5E-9A8E-0A0B0C0D0E0F",
            "2d4b4b9e1c1e-4a5e-9a8e-0a0b0c0d0e0f-",
            "2d4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0",
            "2d4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0g",
            "",
            "éd4b4b9e-1c1e-4a5e-9a8e-0a0b0c0d0e0",
        ] {
            assert_eq!(is_uuid(s), uuid.is_match(s), "{s:?}");
        }
    }

    #[test]
    fn canonical_dates_are_chrono_s_dates() {
        for y in [0, 1, 4, 100, 1900, 1996, 2000, 2001, 2024, 2100, 2400, 9999] {
            for m in 0..=13 {
                for d in 0..=32 {
                    let s = format!("{y:04}-{m:02}-{d:02}");
                    let chrono = chrono::NaiveDate::from_ymd_opt(y, m, d);
                    assert_eq!(canonical_date(&s), chrono, "{s}");
                    assert_eq!(
                        canonical_ymd(s.as_bytes()).is_some(),
                        chrono.is_some(),
                        "{s}"
                    );
                    let t = format!("{s}T00:00:00Z");
                    assert_eq!(is_canonical_time(&t), chrono.is_some(), "{t}");
                }
            }
        }
    }

    #[test]
    fn canonical_times_read_as_chrono_reads_them() {
        for s in [
            "1993-07-20T09:44:18.674Z",
            "2000-02-29T23:59:59Z",
            "2001-02-29T00:00:00.000Z",
            "2015-13-21T11:04:38.419Z",
            "2015-06-21T24:04:38.419Z",
            "2015-06-21T11:60:38.419Z",
            "2015-06-21t11:04:38.419Z",
            "2015-06-21T11:04:38.419+02:00",
            "2015-06-21",
            "2015-6-21",
            "0000-01-01T00:00:00Z",
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.with_timezone(&chrono::Utc).date_naive())
                .or_else(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
            assert_eq!(parse_date(s), chrono, "{s:?}");
            if let Some((d, (h, m, sec, ms))) = canonical_time(s) {
                let c = chrono::DateTime::parse_from_rfc3339(s).unwrap();
                assert_eq!(c.date_naive(), d);
                use chrono::Timelike;
                assert_eq!(
                    (c.hour(), c.minute(), c.second(), c.nanosecond() / 1_000_000),
                    (h, m, sec, ms)
                );
            }
        }
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
