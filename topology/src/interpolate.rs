//! `${VAR}` and `${VAR:-default}` in string values of a topology file, read from the
//! environment. `$$` is a literal `$`. Only string values are interpolated, after parsing,
//! so a variable can never change the file's structure.

/// A reference to an environment variable that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("environment variable \"{0}\" is not set (write ${{{0}:-default}} to give a default)")]
    Unset(String),
    #[error("unterminated \"${{\" in \"{0}\"")]
    Unterminated(String),
    #[error("invalid variable name \"{0}\"")]
    BadName(String),
}

/// Replaces every `${VAR}` / `${VAR:-default}` in `text`, looking names up with `lookup`.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| InterpolateError::Unterminated(text.to_owned()))?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(InterpolateError::BadName(name.to_owned()));
            }
            match lookup(name).filter(|v| !(v.is_empty() && default.is_some())) {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => return Err(InterpolateError::Unset(name.to_owned())),
                },
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOPIC" => Some("raw".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(interpolate("t-${TOPIC}", env).unwrap(), "t-raw");
        assert_eq!(interpolate("${NOPE:-5m}", env).unwrap(), "5m");
        assert_eq!(interpolate("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(interpolate("${TOPIC:-x}", env).unwrap(), "raw");
        assert_eq!(interpolate("cost $$5 $x", env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        assert_eq!(
            interpolate("${NOPE}", env),
            Err(InterpolateError::Unset("NOPE".into()))
        );
        assert_eq!(
            interpolate("a ${TOPIC", env),
            Err(InterpolateError::Unterminated("a ${TOPIC".into()))
        );
        assert_eq!(
            interpolate("${1X}", env),
            Err(InterpolateError::BadName("1X".into()))
        );
    }
}
