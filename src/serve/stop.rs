//! Stop strings over streamed text: a piece is passed on only once no
//! stop string can start in it, so the client never sees any part of the
//! stop string that ends the generation (A5 in the [module doc](super)).

/// The text generated so far and how much of it was passed on.
#[derive(Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` passed on.
    sent: usize,
    /// Where a stop string begins, once one has.
    hit: Option<usize>,
}

impl StopText {
    pub fn new(stops: Vec<String>) -> StopText {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..StopText::default()
        }
    }

    /// Adds `piece`; returns the text that may be passed on now, and
    /// whether a stop string has appeared (then nothing more will pass).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.hit.is_some() {
            return (String::new(), true);
        }
        // A stop string may begin in text already held back, never earlier.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        self.text.push_str(piece);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = hit {
            self.hit = Some(at);
            return (self.take(at), true);
        }
        // Hold back the longest tail that begins some stop string.
        let mut safe = self.text.len();
        for s in &self.stops {
            for k in (1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        (self.take(safe), false)
    }

    /// The text held back, once generation has ended without a stop string.
    pub fn finish(&mut self) -> String {
        match self.hit {
            Some(_) => String::new(),
            None => self.take(self.text.len()),
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.hit.is_some()
    }

    /// Everything passed on (the answer's text).
    pub fn sent(&self) -> &str {
        &self.text[..self.sent]
    }

    fn take(&mut self, upto: usize) -> String {
        let upto = upto.max(self.sent);
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let (t, stop) = s.push(p);
            out.push(t);
            if stop {
                return (out, true, s.sent().to_string());
            }
        }
        out.push(s.finish());
        (out, false, s.sent().to_string())
    }

    #[test]
    fn a_stop_string_split_over_pieces_is_never_sent() {
        let (out, stop, text) = run(&["END"], &["Once E", "N", "D more"]);
        assert!(stop);
        assert_eq!(text, "Once ");
        assert_eq!(out, vec!["Once ", "", ""]);
    }

    #[test]
    fn a_held_prefix_that_does_not_complete_is_sent_later() {
        let (out, stop, text) = run(&["END"], &["a E", "x", "y"]);
        assert!(!stop);
        assert_eq!(text, "a Exy");
        assert_eq!(out.concat(), "a Exy");
        assert_eq!(out[0], "a ");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_kept_whole() {
        let (_, stop, text) = run(&["é!", "b"], &["aé", "!b"]);
        assert!(stop);
        assert_eq!(text, "a");
        let (out, stop, _) = run(&[], &["ünï", "côdé"]);
        assert!(!stop);
        assert_eq!(out.concat(), "ünïcôdé");
    }
}
