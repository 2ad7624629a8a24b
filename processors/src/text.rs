//! Unicode-aware text cleaning: NFC, trimmed and collapsed white space, title case for names,
//! phone numbers as digits.

use unicode_normalization::UnicodeNormalization;

/// NFC, trimmed, every run of white space collapsed to one space.
pub fn clean_text(s: &str) -> String {
    let nfc: String = s.nfc().collect();
    let mut out = String::with_capacity(nfc.len());
    for word in nfc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Title case that knows scripts and name parts: every part after a space, hyphen or
/// apostrophe starts upper case, the rest is lower case. `o'neil-smith` → `O'Neil-Smith`,
/// `зоряна` → `Зоряна`; scripts without case (Persian) are unchanged.
pub fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = c.is_whitespace() || matches!(c, '-' | '\'' | '’' | '‐');
    }
    // final sigma: lower-casing one character at a time cannot know the word ends
    if out.contains('σ') {
        out = fix_final_sigma(&out);
    }
    out
}

fn fix_final_sigma(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let at_end = chars.get(i + 1).is_none_or(|n| !n.is_alphabetic());
            let after_letter = i > 0 && chars[i - 1].is_alphabetic();
            if c == 'σ' && at_end && after_letter {
                'ς'
            } else {
                c
            }
        })
        .collect()
}

/// Digits only, keeping one leading `+`: `(272) 790-0888` → `2727900888`,
/// `+44 20 7946 0958` → `+442079460958`. Other scripts' digits become ASCII.
pub fn phone_digits(s: &str) -> String {
    let trimmed = s.trim_start();
    let mut out = String::with_capacity(s.len());
    if trimmed.starts_with('+') {
        out.push('+');
    }
    for c in trimmed.chars() {
        if let Some(d) = c.to_digit(10) {
            out.push(char::from_digit(d, 10).unwrap_or('0'));
        } else if let Some(d) = non_ascii_digit(c) {
            out.push(d);
        }
    }
    out
}

/// Persian and Arabic-Indic digits as ASCII.
fn non_ascii_digit(c: char) -> Option<char> {
    let v = c as u32;
    let d = match v {
        0x0660..=0x0669 => v - 0x0660,
        0x06F0..=0x06F9 => v - 0x06F0,
        _ => return None,
    };
    char::from_digit(d, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_white_space_and_normalises() {
        assert_eq!(clean_text("  Ana \t  María \n"), "Ana María");
        // "e" + combining acute becomes one character
        assert_eq!(clean_text("Jose\u{301}"), "José");
        assert_eq!(clean_text("   "), "");
    }

    #[test]
    fn title_cases_every_name_part_in_any_script() {
        assert_eq!(title_case("o'neil-smith"), "O'Neil-Smith");
        assert_eq!(title_case("зоряна"), "Зоряна");
        assert_eq!(title_case("ЛЕСЯ УКРАЇНКА"), "Леся Українка");
        assert_eq!(title_case("mary ann"), "Mary Ann");
        assert_eq!(title_case("ÉLODIE"), "Élodie");
        assert_eq!(title_case("پارسا"), "پارسا");
        assert_eq!(title_case("ΟΔΥΣΣΕΥΣ"), "Οδυσσευς");
        assert_eq!(title_case("d’artagnan"), "D’Artagnan");
    }

    #[test]
    fn keeps_phone_digits_and_a_leading_plus() {
        assert_eq!(phone_digits("(272) 790-0888"), "2727900888");
        assert_eq!(phone_digits(" +44 20 7946 0958"), "+442079460958");
        assert_eq!(phone_digits("015242 95285"), "01524295285");
        assert_eq!(phone_digits("۰۹۱۲-۳۴۵-۶۷۸۹"), "09123456789");
        assert_eq!(phone_digits("call me"), "");
    }
}
