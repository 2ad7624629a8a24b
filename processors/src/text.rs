//! Unicode-aware text cleaning: NFC, trimmed and collapsed white space, title case for names,
//! phone numbers as digits. NFC costs nothing for text that is NFC already (ASCII and most
//! text): the quick check says so without normalising.

use std::borrow::Cow;

use std::sync::OnceLock;

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// `s` in NFC: itself when the quick check says it is (ASCII always is), normalised
/// otherwise.
pub fn nfc(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || is_stable(s) || is_nfc_quick(s.chars()) == IsNormalized::Yes {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfc().collect())
    }
}

/// True when every character of `s` is [`stable`]: then `s` is NFC.
fn is_stable(s: &str) -> bool {
    let table = stable_table();
    s.chars().all(|c| {
        let cp = c as u32;
        cp < 0x80 || (cp < 0x1_0000 && table[cp as usize / 64] >> (cp % 64) & 1 == 1)
    })
}

/// True for a character of the Basic Multilingual Plane that is NFC on its own and combines
/// with nothing before it (NFC quick check Yes, combining class 0): text made of such
/// characters only is NFC.
#[cfg(test)]
fn stable(c: char) -> bool {
    let cp = c as u32;
    cp < 0x1_0000 && stable_table()[cp as usize / 64] >> (cp % 64) & 1 == 1
}

/// [`stable`] as a table of 65,536 bits, made once from the normalisation data.
fn stable_table() -> &'static [u64; 1024] {
    static TABLE: OnceLock<Box<[u64; 1024]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u64; 1024]);
        for cp in 0..0x1_0000u32 {
            if let Some(ch) = char::from_u32(cp) {
                if canonical_combining_class(ch) == 0
                    && is_nfc_quick(std::iter::once(ch)) == IsNormalized::Yes
                {
                    t[cp as usize / 64] |= 1 << (cp % 64);
                }
            }
        }
        t
    })
}

/// `s.trim()`, with no look at the characters when both ends are visible ASCII (most
/// values): then there is nothing to trim.
#[inline]
pub fn trim(s: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b < 0x7f);
    if visible(s.as_bytes().first()) && visible(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// `f` of a JSON number's text as serde_json writes it (an integer without `fmt`).
pub fn with_number_text<R>(n: &serde_json::Number, f: impl FnOnce(&str) -> R) -> R {
    if let Some(u) = n.as_u64() {
        f(itoa::Buffer::new().format(u))
    } else if let Some(i) = n.as_i64() {
        f(itoa::Buffer::new().format(i))
    } else {
        f(&n.to_string())
    }
}

/// NFC, trimmed, every run of white space collapsed to one space.
pub fn clean_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    clean_into(s, &mut out);
    out
}

/// [`clean_text`] appended to `out`.
pub fn clean_into(s: &str, out: &mut String) {
    let start = out.len();
    for word in nfc(s).split_whitespace() {
        if out.len() > start {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// True when `s` is trimmed and its only white space is single spaces between words —
/// [`squish_into`] would copy it unchanged. Decided on the bytes; false also for text with
/// characters that may be white space beyond ASCII (the general path decides those).
pub fn is_squished(s: &str) -> bool {
    let b = s.as_bytes();
    let mut last_space = true;
    for &c in b {
        if c > b' ' {
            // the lead bytes of every white space character beyond ASCII (U+0085, U+00A0,
            // U+1680, U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000): let the
            // general path decide
            if c >= 0xc2 && (c == 0xc2 || (0xe1..=0xe3).contains(&c)) {
                return false;
            }
            last_space = false;
        } else if c == b' ' && !last_space {
            last_space = true;
        } else {
            // a leading or doubled space, a tab, a line break, a control character
            return false;
        }
    }
    !last_space || b.is_empty()
}

/// Trimmed, every run of white space collapsed to one space, appended to `out`.
pub fn squish_into(s: &str, out: &mut String) {
    if is_squished(s) {
        out.push_str(s);
        return;
    }
    let start = out.len();
    for word in s.split_whitespace() {
        if out.len() > start {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// The most characters NFC makes of one character (Unicode's normalization FAQ: NFC
/// expands a text at most threefold, in UTF-32 as in UTF-8). Trimming and collapsing white
/// space only shorten, so a text of `n` bytes (at most `n` characters) cleans to at most
/// `n * NFC_GROWTH` characters.
pub const NFC_GROWTH: usize = 3;

/// The number of characters of [`clean_text`]`(s)`, without making it when `s` is NFC.
pub fn clean_len(s: &str) -> usize {
    if s.is_ascii() && is_squished(s) {
        return s.len();
    }
    if let Some(n) = clean_chars(s) {
        return n;
    }
    match nfc(s) {
        Cow::Borrowed(s) if is_squished(s) => s.chars().count(),
        Cow::Borrowed(s) => {
            let mut n = 0;
            for word in s.split_whitespace() {
                n += usize::from(n > 0) + word.chars().count();
            }
            n
        }
        Cow::Owned(s) => clean_text(&s).chars().count(),
    }
}

/// The number of characters of `s` when it is clean already (`clean_text(s) == s`): every
/// character [`stable`] and its only white space single spaces between words. One pass;
/// `None` when it cannot tell.
fn clean_chars(s: &str) -> Option<usize> {
    let table = stable_table();
    let mut n = 0;
    let mut last_space = true;
    for c in s.chars() {
        let cp = c as u32;
        let space = c == ' ';
        if (space && last_space)
            || (!space && c.is_whitespace())
            || (cp >= 0x80 && !(cp < 0x1_0000 && table[cp as usize / 64] >> (cp % 64) & 1 == 1))
        {
            return None;
        }
        last_space = space;
        n += 1;
    }
    (!last_space || n == 0).then_some(n)
}

/// Title case that knows scripts and name parts: every part after a space, hyphen or
/// apostrophe starts upper case, the rest is lower case. `o'neil-smith` → `O'Neil-Smith`,
/// `зоряна` → `Зоряна`; scripts without case (Persian) are unchanged.
pub fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    title_case_into(s, &mut out);
    out
}

/// [`title_case`] appended to `out`.
pub fn title_case_into(s: &str, out: &mut String) {
    if s.is_ascii() {
        // the same rules on bytes: no ASCII letter changes length or has a final form
        let mut start = true;
        let cased = s.bytes().map(|b| {
            let c = if start {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            start = ascii_word_break(b);
            c
        });
        // SAFETY: ASCII bytes in, ASCII bytes out: `out` stays UTF-8
        unsafe { out.as_mut_vec() }.extend(cased);
        return;
    }
    let from = out.len();
    let mut start = true;
    let mut sigma = false;
    for c in s.chars() {
        if c.is_ascii() {
            out.push(if start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            start = ascii_word_break(c as u8);
            continue;
        }
        if start {
            out.extend(c.to_uppercase());
        } else {
            for l in c.to_lowercase() {
                sigma |= l == 'σ';
                out.push(l);
            }
        }
        start = word_break(c);
    }
    // final sigma: lower-casing one character at a time cannot know the word ends
    if sigma && out[from..].contains('σ') {
        let fixed = fix_final_sigma(&out[from..]);
        out.truncate(from);
        out.push_str(&fixed);
    }
}

/// A name part starts after this ASCII byte: white space (with the vertical tab), a hyphen
/// or an apostrophe.
#[inline]
fn ascii_word_break(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b || b == b'-' || b == b'\''
}

/// A name part starts after this character beyond ASCII: white space, a typographic
/// apostrophe or a hyphen.
#[inline]
fn word_break(c: char) -> bool {
    c.is_whitespace() || matches!(c, '’' | '‐')
}

/// `title_case(s) == s`, told without writing anything: what is title cased already can
/// stay where it is in the record.
pub fn is_title_case(s: &str) -> bool {
    let mut start = true;
    let ascii = |b: u8, start: &mut bool| {
        let same = if *start {
            !b.is_ascii_lowercase()
        } else {
            !b.is_ascii_uppercase()
        };
        *start = ascii_word_break(b);
        same
    };
    if s.is_ascii() {
        return s.bytes().all(|b| ascii(b, &mut start));
    }
    let cases = case_table();
    for c in s.chars() {
        if c.is_ascii() {
            if !ascii(c as u8, &mut start) {
                return false;
            }
            continue;
        }
        // a lower-case sigma at a word's end becomes a final sigma: title case knows
        if c == 'σ' {
            return title_case(s) == s;
        }
        let cp = c as usize;
        let same = if cp < CASED_BELOW {
            cases[usize::from(start)][cp / 64] >> (cp % 64) & 1 == 1
        } else if start {
            single(c.to_uppercase()) == Some(c)
        } else {
            single(c.to_lowercase()) == Some(c)
        };
        if !same {
            return false;
        }
        start = word_break(c);
    }
    true
}

/// True when ASCII text `b` has a byte in `range` (of ASCII bytes), eight bytes at a time:
/// adding `0x80 - start` to an ASCII byte sets its high bit when it is at least `start`,
/// adding `0x7f - end` when it is beyond `end`, and neither carries into the next byte.
pub fn ascii_has(b: &[u8], range: std::ops::RangeInclusive<u8>) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let (start, end) = (*range.start(), *range.end());
    debug_assert!(b.is_ascii() && start >= 1 && end < 0x80 && start <= end);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        let from = x.wrapping_add(ONES * u64::from(0x80 - start));
        let beyond = x.wrapping_add(ONES * u64::from(0x7f - end));
        if from & !beyond & (ONES << 7) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|b| range.contains(b))
}

/// [`case_table`] covers the characters below this one (Latin, Greek, Cyrillic, Armenian,
/// Hebrew, Arabic and Persian, Syriac, Thaana).
const CASED_BELOW: usize = 0x800;

/// For each character below [`CASED_BELOW`], a bit set when lower-casing it (table 0) or
/// upper-casing it (table 1) gives the character itself; made once from the standard
/// library's own case mappings, which a character's table lookup then replaces.
fn case_table() -> &'static [[u64; CASED_BELOW / 64]; 2] {
    static TABLE: OnceLock<[[u64; CASED_BELOW / 64]; 2]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [[0u64; CASED_BELOW / 64]; 2];
        for c in (0..CASED_BELOW as u32).filter_map(char::from_u32) {
            let cp = c as usize;
            if single(c.to_lowercase()) == Some(c) {
                t[0][cp / 64] |= 1 << (cp % 64);
            }
            if single(c.to_uppercase()) == Some(c) {
                t[1][cp / 64] |= 1 << (cp % 64);
            }
        }
        t
    })
}

/// The one character an iterator yields, else `None`.
fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
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
    let mut out = String::with_capacity(s.len());
    phone_digits_into(s, &mut out);
    out
}

/// [`phone_digits`] appended to `out`.
pub fn phone_digits_into(s: &str, out: &mut String) {
    if s.is_ascii() {
        // no ASCII character but `0`–`9` is a digit
        let b = s.trim_start().as_bytes();
        let digits = b.iter().copied().filter(u8::is_ascii_digit);
        // SAFETY: `+` and ASCII digits: `out` stays UTF-8
        let v = unsafe { out.as_mut_vec() };
        if b.first() == Some(&b'+') {
            v.push(b'+');
        }
        v.extend(digits);
        return;
    }
    let trimmed = s.trim_start();
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
        for s in [
            "  Ana \t  María \n",
            "Jose\u{301}  x",
            "   ",
            "a",
            "ﬁ  Σ",
            "",
            "Леся Українка",
            "Леся  Українка",
            "Леся ",
            " Леся",
            "Леся\u{3000}Українка",
            "Ле\u{301}ся",
            "a\u{1}b é",
            "😀 x",
        ] {
            assert_eq!(clean_len(s), clean_text(s).chars().count(), "{s:?}");
            if let Some(n) = clean_chars(s) {
                assert_eq!(clean_text(s), s, "{s:?}");
                assert_eq!(n, s.chars().count(), "{s:?}");
            }
        }
        assert!(matches!(nfc("plain ascii"), Cow::Borrowed(_)));
        for (s, squished) in [
            ("a b", true),
            ("", true),
            (" a", false),
            ("a ", false),
            ("a  b", false),
            ("a\tb", false),
            ("é", true),
            ("Леся Українка", true),
            ("a\u{a0}b", false),
            ("a\u{3000}", false),
        ] {
            assert_eq!(is_squished(s), squished, "{s:?}");
            let mut out = String::new();
            squish_into(s, &mut out);
            if squished {
                assert_eq!(out, s);
            }
        }
        assert!(matches!(nfc("Jose\u{301}"), Cow::Owned(_)));
        // the table agrees with the quick check on every character of the plane
        for cp in 0..0x1_0000u32 {
            if let Some(c) = char::from_u32(cp) {
                let s = format!("a{c}");
                if stable(c) {
                    assert_eq!(is_nfc_quick(s.chars()), IsNormalized::Yes, "{cp:x}");
                }
            }
        }
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
        assert_eq!(title_case("ΟΔΥΣΣΕΥΣ σΊΣΥΦΟΣ"), "Οδυσσευς Σίσυφος");
        assert_eq!(title_case("d’artagnan"), "D’Artagnan");
        // the ASCII path and the general one agree
        for s in [
            "o'neil-smith",
            "mary\tann",
            "x\u{b}y",
            "ABC def-GHI",
            "a1b2 c",
            "",
            "jean-ÉLODIE o'brÏen",
            "İlkay ǅivko",
        ] {
            let mut general = String::new();
            let mut start = true;
            for c in s.chars() {
                if start {
                    general.extend(c.to_uppercase());
                } else {
                    general.extend(c.to_lowercase());
                }
                start = c.is_whitespace() || matches!(c, '-' | '\'' | '’' | '‐');
            }
            assert_eq!(title_case(s), general, "{s:?}");
        }
    }

    #[test]
    fn finds_ascii_bytes_of_a_range_as_a_byte_at_a_time_would() {
        let text: Vec<u8> = (0..0x80u8).cycle().take(600).collect();
        for len in [0, 1, 7, 8, 9, 16, 17, 40] {
            for at in (0..text.len() - len).step_by(13) {
                let b = &text[at..at + len];
                for range in [b'A'..=b'Z', b'a'..=b'z', 1..=0x7f, 0x7f..=0x7f, 1..=1] {
                    let want = b.iter().any(|c| range.contains(c));
                    assert_eq!(ascii_has(b, range.clone()), want, "{b:?} {range:?}");
                }
            }
        }
        assert!(!ascii_has(
            b"0b8c5e86-0e6f-4f0c-9d2c-7a3a8f1e2b4d",
            b'A'..=b'Z'
        ));
        assert!(ascii_has(
            b"0b8c5e86-0e6f-4f0c-9d2c-7a3a8f1e2B4d",
            b'A'..=b'Z'
        ));
    }

    #[test]
    fn nfc_makes_at_most_nfc_growth_characters_of_one() {
        let most = (0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .map(|c| nfc(c.encode_utf8(&mut [0; 4])).chars().count())
            .max();
        assert_eq!(most, Some(NFC_GROWTH));
    }

    #[test]
    fn tells_what_is_title_cased_already_as_title_case_would() {
        for s in [
            "o'neil-smith",
            "O'Neil-Smith",
            "O'neil-smith",
            "Mary\tAnn",
            "Mary\tann",
            "X\u{b}Y",
            "Abc Def-Ghi",
            "A1b2 C",
            "a1b2 c",
            "",
            "Mr",
            "MR",
            "Jean-Élodie O'Brïen",
            "Jean-ÉLodie",
            "İlkay Ǆivko",
            "İlkay ǅivko",
            "Зоряна",
            "зоряна",
            "Οδυσσευς",
            "Οδυσσευσ",
            "Οδυσσεύς Σίσυφος",
            "پارسا",
            "D’Artagnan",
            "D’artagnan",
            "Straße",
            "ß",
        ] {
            assert_eq!(is_title_case(s), title_case(s) == s, "{s:?}");
            let t = title_case(s);
            assert_eq!(is_title_case(&t), title_case(&t) == t, "{t:?}");
        }
        // every character of the case table and a little beyond, at a word's start and
        // inside one
        for c in (0..0x900).filter_map(char::from_u32) {
            for s in [format!("{c}b"), format!("Ö{c}b"), format!("Ö {c}")] {
                assert_eq!(is_title_case(&s), title_case(&s) == s, "{s:?}");
            }
        }
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
