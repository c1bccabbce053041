//! Writing the token file the way an operator can trust: the whole file is rewritten to a
//! temporary file beside it, fsynced, then renamed over the old one, so a crash leaves either
//! the old or the new file, never half of one.

use crate::config::{Problems, TokensFile};
use std::io::Write;
use std::path::Path;

/// The file's text: YAML in its JSON form, one token per line, so a diff shows one line per
/// changed token and a large file loads fast (see `config::parse_yaml`).
pub fn render(file: &TokensFile) -> serde_json::Result<String> {
    let mut out = String::from("{\"tokens\": [");
    for (i, t) in file.tokens.iter().enumerate() {
        out.push_str(if i == 0 { "\n  " } else { ",\n  " });
        out.push_str(&serde_json::to_string(t)?);
    }
    out.push_str(if file.tokens.is_empty() {
        "]}\n"
    } else {
        "\n]}\n"
    });
    Ok(out)
}

/// Atomically replaces `path` with `file`.
pub fn write_tokens_file(path: &Path, file: &TokensFile) -> std::io::Result<()> {
    let body = render(file).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tokens.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(
        b"# Written by `scimgate token`. Holds hashes, never secrets. YAML, in its JSON form.\n",
    )?;
    tmp.write_all(body.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the token file, applies `edit`, and writes it back atomically. A missing file is an
/// empty one, so the first `token issue` creates it.
pub fn update_tokens_file<T>(
    path: &Path,
    edit: impl FnOnce(&mut TokensFile) -> Result<T, String>,
) -> Result<T, String> {
    let mut file = match std::fs::read_to_string(path) {
        Ok(src) => {
            let mut problems = Problems::default();
            crate::config::parse_yaml::<TokensFile>(path, &src, &mut problems)
                .ok_or_else(|| problems.to_string())?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokensFile::default(),
        Err(e) => return Err(format!("{}: cannot read the file: {e}", path.display())),
    };
    let out = edit(&mut file)?;
    write_tokens_file(path, &file)
        .map_err(|e| format!("{}: cannot write the file: {e}", path.display()))?;
    Ok(out)
}
