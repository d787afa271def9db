//! The `--config` file: a TOML subset (`key = "string"`, `key = 123`,
//! `key = true`, `key = ["a", "b"]` over several lines, `#` comments) with
//! the keys of [`ConfigFile`]; anything else is an error naming the line.

/// The keys the config file may set.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// `server`.
    pub server: Option<String>,
    /// `store`.
    pub store: Option<String>,
    /// `token_file`.
    pub token_file: Option<String>,
    /// `ca_file`.
    pub ca_file: Option<String>,
    /// `platform`.
    pub platform: Option<String>,
    /// `images`.
    pub images: Option<Vec<String>>,
    /// `retry_for` (seconds).
    pub retry_for: Option<u64>,
    /// `keep`: retention, previous images kept per repository.
    pub keep: Option<u64>,
    /// `force_platform = true`: sync images made for another platform.
    pub force_platform: Option<bool>,
    /// `deltas = false`: do not ask for binary deltas.
    pub deltas: Option<bool>,
    /// `verify_layers = "on" | "off" | "require"` (or true/false): check
    /// each new layer against its diff_id ([`crate::tarsplit`]).
    pub verify_layers: Option<String>,
    /// `trust_key`: PEM public key; only images signed with it are applied.
    pub trust_key: Option<String>,
}

enum TomlValue {
    Bool(bool),
    Str(String),
    Int(u64),
    List(Vec<String>),
}

fn toml_string(s: &str) -> std::result::Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("expected a \"string\"")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                _ => return Err("unsupported escape".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

/// The line without its `#` comment (outside strings), trimmed.
fn strip_comment(s: &str) -> &str {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '#' if !in_str => return s[..i].trim(),
            _ => {}
        }
    }
    s.trim()
}

/// Parse the config file subset: `key = "string"`, `key = 123`,
/// `key = ["a", "b"]` (may span lines), `#` comments.
pub fn parse_config(text: &str) -> std::result::Result<ConfigFile, String> {
    let mut cfg = ConfigFile::default();
    let mut lines = text.lines().enumerate();
    while let Some((no, line)) = lines.next() {
        let line = strip_comment(line);
        if line.is_empty() {
            continue;
        }
        let err = |m: &str| format!("line {}: {m}", no + 1);
        let (key, rest) = line
            .split_once('=')
            .ok_or_else(|| err("expected key = value"))?;
        let key = key.trim();
        let mut rest = rest.trim().to_string();
        let value = if rest.starts_with('[') {
            while !rest.trim_end().ends_with(']') {
                let Some((_, more)) = lines.next() else {
                    return Err(err("unterminated list"));
                };
                rest.push(' ');
                rest.push_str(strip_comment(more));
            }
            let mut items = Vec::new();
            let mut s = rest[1..].trim_start();
            loop {
                s = s.trim_start();
                if let Some(after) = s.strip_prefix(']') {
                    if !strip_comment(after).is_empty() {
                        return Err(err("trailing text after list"));
                    }
                    break;
                }
                let (item, after) = toml_string(s).map_err(|m| err(&m))?;
                items.push(item);
                s = after.trim_start();
                s = s.strip_prefix(',').unwrap_or(s);
            }
            TomlValue::List(items)
        } else if rest.starts_with('"') {
            let (v, after) = toml_string(&rest).map_err(|m| err(&m))?;
            if !strip_comment(after).is_empty() {
                return Err(err("trailing text after value"));
            }
            TomlValue::Str(v)
        } else if rest == "true" || rest == "false" {
            TomlValue::Bool(rest == "true")
        } else {
            TomlValue::Int(
                rest.parse()
                    .map_err(|_| err("expected a \"string\", number or list"))?,
            )
        };
        match (key, value) {
            ("server", TomlValue::Str(s)) => cfg.server = Some(s),
            ("store", TomlValue::Str(s)) => cfg.store = Some(s),
            ("token_file", TomlValue::Str(s)) => cfg.token_file = Some(s),
            ("ca_file", TomlValue::Str(s)) => cfg.ca_file = Some(s),
            ("platform", TomlValue::Str(s)) => cfg.platform = Some(s),
            ("images", TomlValue::List(l)) => cfg.images = Some(l),
            ("retry_for", TomlValue::Int(n)) => cfg.retry_for = Some(n),
            ("keep", TomlValue::Int(n)) => cfg.keep = Some(n),
            ("force_platform", TomlValue::Bool(b)) => cfg.force_platform = Some(b),
            ("deltas", TomlValue::Bool(b)) => cfg.deltas = Some(b),
            ("verify_layers", TomlValue::Str(s)) => cfg.verify_layers = Some(s),
            ("verify_layers", TomlValue::Bool(b)) => cfg.verify_layers = Some(b.to_string()),
            ("trust_key", TomlValue::Str(s)) => cfg.trust_key = Some(s),
            (k, _) => return Err(err(&format!("unknown key or wrong type: {k}"))),
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_config_subset() {
        let cfg = parse_config(
            "# device config\nserver = \"https://reg.example:5000\"\nstore = \"/var/lib/ll\" # here\n\
             images = [\"a:v1\",\n  \"b@sha256:00\", # second\n]\nretry_for = 60\n",
        )
        .unwrap();
        assert_eq!(cfg.server.as_deref(), Some("https://reg.example:5000"));
        assert_eq!(cfg.store.as_deref(), Some("/var/lib/ll"));
        assert_eq!(
            cfg.images,
            Some(vec!["a:v1".to_string(), "b@sha256:00".to_string()])
        );
        assert_eq!(cfg.retry_for, Some(60));
        assert!(parse_config("bogus = \"x\"").is_err());
        assert!(parse_config("server = https://x").is_err());
        assert!(parse_config("images = [\"a\"").is_err());
    }
}
