//! Parses narinfo text the way Nix's `NarInfo` constructor does (`Key: value\n`
//! lines, final newline required, repeated `Sig`), so a test fails on anything
//! the stock client would reject.

#[derive(Debug, Clone)]
pub struct NarInfo {
    fields: Vec<(String, String)>,
}

impl NarInfo {
    pub fn parse(text: &str) -> Result<NarInfo, String> {
        if !text.ends_with('\n') {
            return Err("last line must end with a newline".into());
        }
        let mut fields = Vec::new();
        for line in text.lines() {
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| format!("line without ': ': {line:?}"))?;
            if k != "Sig" && fields.iter().any(|(f, _): &(String, String)| f == k) {
                return Err(format!("duplicate field {k}"));
            }
            fields.push((k.to_string(), v.to_string()));
        }
        let n = NarInfo { fields };
        for k in ["StorePath", "URL", "NarHash", "NarSize"] {
            if n.get(k).is_none_or(str::is_empty) {
                return Err(format!("{k} missing"));
            }
        }
        Ok(n)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn sigs(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == "Sig")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Reference base names, sorted.
    pub fn references(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .get("References")
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        r.sort();
        r
    }
}
