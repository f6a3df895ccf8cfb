//! The bounds of every YAML file agd reads (`--algo-config`, and the config files to
//! come): at most [`MAX_BYTES`], nested at most [`MAX_DEPTH`] levels. The YAML parser's
//! time grows with the square of the nesting (its scanner revisits every open level at
//! each token): a file nested 100k levels deep took 33 s to be refused, and a 1 MB one
//! would take minutes. Checked on the text, in one pass, before the parser sees it.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// The largest YAML file agd reads. Configs are a few hundred bytes.
pub const MAX_BYTES: u64 = 1 << 20;

/// The deepest nesting agd reads. Configs nest three levels.
pub const MAX_DEPTH: usize = 64;

/// The text of the YAML file `path` (`what` says what it is, for errors), read no
/// further than [`MAX_BYTES`]: its parser then [`check`]s it.
pub fn read(path: &Path, what: &str) -> Result<String> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    Ok(text)
}

/// Refuses a document larger than [`MAX_BYTES`] or nested deeper than [`MAX_DEPTH`];
/// `origin` (the file name) starts the error.
pub fn check(text: &str, origin: &str) -> Result<()> {
    if text.len() as u64 > MAX_BYTES {
        bail!(
            "{origin}: larger than {} KiB, which no config is: is it the right file?",
            MAX_BYTES >> 10
        );
    }
    if let Some(line) = too_deep(text) {
        bail!("{origin}: nested deeper than {MAX_DEPTH} levels (line {line}), which no config is");
    }
    Ok(())
}

/// The first line at which `text` nests deeper than [`MAX_DEPTH`], counting every open
/// flow bracket (`[`, `{`, even in strings and comments: a bound must not be fooled by
/// quotes) and each line's block levels: its indentation among the open ones above it,
/// and its compact entries (`- - x`).
fn too_deep(text: &str) -> Option<usize> {
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            let indent = line.len() - content.len();
            while indents.last().is_some_and(|&i| i > indent) {
                indents.pop();
            }
            if indents.last().is_none_or(|&i| i < indent) {
                indents.push(indent);
            }
        }
        let mut rest = content;
        let mut compact = 0;
        while let Some(r) = ["- ", "? ", ": "].iter().find_map(|p| rest.strip_prefix(p)) {
            compact += 1;
            rest = r.trim_start_matches(' ');
        }
        let block = indents.len() + compact;
        for b in line.bytes() {
            match b {
                b'[' | b'{' => flow += 1,
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => continue,
            }
            if block + flow > MAX_DEPTH {
                return Some(n + 1);
            }
        }
        if block > MAX_DEPTH {
            return Some(n + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_pass_and_deep_or_large_documents_are_refused_at_once() {
        for config in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
            let path = config.unwrap().path();
            check(&read(&path, "config").unwrap(), "config").unwrap();
        }
        check("a: [1, {b: [2]}]\nc:\n  d:\n    - - e\n", "ok").unwrap();
        let n = 100_000;
        let deep = [
            "[".repeat(n) + &"]".repeat(n),
            "{a: ".repeat(n) + &"}".repeat(n),
            "- ".repeat(n) + "x",
            (0..200)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect(),
        ];
        for text in &deep {
            let e = check(text, "f.yaml").unwrap_err().to_string();
            assert!(e.contains("f.yaml: nested deeper than 64 levels"), "{e}");
        }
        let large = "a: 1\n".repeat(300_000);
        let e = check(&large, "f.yaml").unwrap_err().to_string();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }
}
