//! Long text into ordered parts, and SMS segment accounting.
//!
//! [`split`] cuts text longer than a limit (UTF-16 code units, which is how Twilio counts the
//! 1600-character body limit for non-Latin text) at sentence boundaries, else word boundaries,
//! else grapheme boundaries, so no part ends mid-character or mid-grapheme. Whitespace at a cut
//! is dropped; nothing else changes.
//!
//! [`analyze`] tells the encoding Twilio will use (GSM-7 when every character is in the GSM 03.38
//! basic set or its extension table, else UCS-2) and the number of SMS segments: one segment
//! holds 160 GSM-7 septets or 70 UCS-2 units; concatenated segments hold 153 or 67 (the rest
//! is the user-data header), and an escape pair or surrogate pair never straddles two segments.

use unicode_segmentation::UnicodeSegmentation;

use crate::egress::sink::TextInfo;

/// GSM 03.38 basic character set (one septet each; ESC excluded).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table (two septets each: ESC + char).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{000C}";

/// How Twilio will encode a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

fn gsm7_cost(c: char) -> Option<u32> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Encoding and segment count of `text`.
pub fn analyze(text: &str) -> TextInfo {
    let characters = text.chars().count();
    let gsm: Option<Vec<u32>> = text.chars().map(gsm7_cost).collect();
    let (encoding, costs, single, multi) = match gsm {
        Some(costs) => (Encoding::Gsm7, costs, 160, 153),
        None => (
            Encoding::Ucs2,
            text.chars().map(|c| c.len_utf16() as u32).collect(),
            70,
            67,
        ),
    };
    let total: u32 = costs.iter().sum();
    let segments = if total == 0 {
        0
    } else if total <= single {
        1
    } else {
        // Greedy packing: an escape or surrogate pair is never split across segments.
        let mut segments = 1;
        let mut used = 0;
        for cost in costs {
            if used + cost > multi {
                segments += 1;
                used = 0;
            }
            used += cost;
        }
        segments
    };
    TextInfo {
        characters,
        encoding: Some(encoding.as_str()),
        segments,
    }
}

/// Length as Twilio counts the body limit: UTF-16 code units.
pub fn units(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Splits `text` into parts of at most `max_units` UTF-16 units, in order.
///
/// Text that fits is returned as one part, unchanged. Otherwise cuts fall at sentence
/// boundaries, else word boundaries, else grapheme boundaries (a single grapheme longer than
/// the limit, which only absurd input has, is cut between characters).
pub fn split(text: &str, max_units: usize) -> Vec<String> {
    let max_units = max_units.max(1);
    if units(text) <= max_units {
        return vec![text.to_owned()];
    }
    let mut parts = Splitter {
        max: max_units,
        parts: Vec::new(),
        current: String::new(),
    };
    for sentence in text.split_sentence_bounds() {
        if parts.try_append(sentence) {
            continue;
        }
        parts.flush();
        if parts.try_append(sentence) {
            continue;
        }
        for word in sentence.split_word_bounds() {
            if parts.try_append(word) {
                continue;
            }
            parts.flush();
            if parts.try_append(word) {
                continue;
            }
            for grapheme in word.graphemes(true) {
                if parts.try_append(grapheme) {
                    continue;
                }
                parts.flush();
                if parts.try_append(grapheme) {
                    continue;
                }
                for c in grapheme.chars() {
                    let mut buffer = [0u8; 4];
                    let c = c.encode_utf8(&mut buffer);
                    if !parts.try_append(c) {
                        parts.flush();
                        parts.try_append(c);
                    }
                }
            }
        }
    }
    parts.flush();
    parts.parts
}

struct Splitter {
    max: usize,
    parts: Vec<String>,
    current: String,
}

impl Splitter {
    /// Appends `piece` when it fits; whitespace at the start of a part is dropped.
    fn try_append(&mut self, piece: &str) -> bool {
        let piece = if self.current.is_empty() {
            piece.trim_start()
        } else {
            piece
        };
        if piece.is_empty() {
            return true;
        }
        // Trailing whitespace is trimmed on flush, so it need not fit.
        let needed = units(self.current.as_str()) + units(piece.trim_end());
        if needed <= self.max {
            self.current.push_str(piece);
            true
        } else {
            false
        }
    }

    fn flush(&mut self) {
        let part = self.current.trim_end();
        if !part.is_empty() {
            self.parts.push(part.to_owned());
        }
        self.current.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squash(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn short_text_is_one_unchanged_part() {
        assert_eq!(split("Hello there.", 1600), vec!["Hello there.".to_owned()]);
    }

    #[test]
    fn cuts_at_sentence_boundaries_in_order() {
        let text = "First sentence here. Second one is here. Third comes last.";
        let parts = split(text, 42);
        assert_eq!(
            parts,
            vec![
                "First sentence here. Second one is here.",
                "Third comes last."
            ]
        );
        let parts = split(text, 25);
        assert_eq!(
            parts,
            vec![
                "First sentence here.",
                "Second one is here.",
                "Third comes last."
            ]
        );
    }

    #[test]
    fn long_sentences_cut_at_word_boundaries() {
        let text = "one two three four five six seven eight nine ten";
        let parts = split(text, 15);
        for part in &parts {
            assert!(units(part) <= 15, "{part:?}");
            assert!(!part.starts_with(' ') && !part.ends_with(' '));
        }
        assert_eq!(squash(&parts.join(" ")), squash(text));
        assert_eq!(parts[0], "one two three");
    }

    #[test]
    fn never_cuts_inside_a_grapheme() {
        // Family emoji (ZWJ sequence, 11 UTF-16 units) and a combining accent.
        let family = "👨‍👩‍👧‍👦";
        let text = format!("{family}{family}{family}e\u{301}e\u{301}");
        let parts = split(&text, 12);
        let originals: Vec<&str> = text.graphemes(true).collect();
        let mut rebuilt = Vec::new();
        for part in &parts {
            assert!(units(part) <= 12, "{part:?}");
            rebuilt.extend(part.graphemes(true));
        }
        assert_eq!(rebuilt, originals);
    }

    #[test]
    fn a_1600_limit_splits_a_long_reply_into_ordered_parts_that_rejoin() {
        let sentence = "The quick brown fox jumps over the lazy dog again and again. ";
        let text = sentence.repeat(60);
        let parts = split(&text, 1600);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| units(p) <= 1600 && p.ends_with('.')));
        assert_eq!(squash(&parts.join(" ")), squash(&text));
    }

    #[test]
    fn gsm7_and_ucs2_segments() {
        assert_eq!(
            analyze(""),
            TextInfo {
                characters: 0,
                encoding: Some("GSM-7"),
                segments: 0
            }
        );
        let info = analyze(&"a".repeat(160));
        assert_eq!((info.encoding, info.segments), (Some("GSM-7"), 1));
        assert_eq!(analyze(&"a".repeat(161)).segments, 2);
        assert_eq!(analyze(&"a".repeat(306)).segments, 2);
        assert_eq!(analyze(&"a".repeat(307)).segments, 3);
        // Extension characters cost two septets.
        assert_eq!(analyze(&"€".repeat(80)).segments, 1);
        assert_eq!(analyze(&"€".repeat(81)).segments, 2);
        // An escape pair is not split: after 152 'a' the '€' moves to segment two, so 306
        // septets need three segments instead of two.
        assert_eq!(
            analyze(&format!("{}€{}", "a".repeat(152), "a".repeat(152))).segments,
            3
        );
        // Any non-GSM character switches the whole body to UCS-2.
        let info = analyze(&format!("{}é", "a".repeat(69)));
        assert_eq!((info.encoding, info.segments), (Some("GSM-7"), 1));
        let info = analyze(&format!("{}ç", "a".repeat(69)));
        assert_eq!((info.encoding, info.segments), (Some("UCS-2"), 1));
        assert_eq!(analyze(&"ж".repeat(71)).segments, 2);
        assert_eq!(analyze(&"ж".repeat(134)).segments, 2);
        assert_eq!(analyze(&"ж".repeat(135)).segments, 3);
        // Emoji are surrogate pairs: two units each, never split.
        let info = analyze(&"😀".repeat(35));
        assert_eq!((info.characters, info.segments), (35, 1));
        assert_eq!(analyze(&"😀".repeat(36)).segments, 2);
        // A surrogate pair is not split either: 134 units, but three segments.
        assert_eq!(analyze(&format!("{0}😀{0}", "ж".repeat(66))).segments, 3);
    }
}
