//! The environment of a started process: the few inherited variables, then env files, then
//! the spec's explicit variables; and the env file syntax.

use std::collections::BTreeMap;
use std::fs;

use super::{SpawnError, SpawnSpec, DEFAULT_PATH, INHERITED_ENV};
use crate::spec::common::is_env_name;

pub(super) fn environment(spec: &SpawnSpec) -> Result<BTreeMap<String, String>, SpawnError> {
    let mut env = BTreeMap::new();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key).and_then(|v| v.into_string().ok()) {
            env.insert((*key).to_string(), value);
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    for path in spec.env_files {
        let text = fs::read_to_string(path).map_err(|source| SpawnError::EnvFileRead {
            path: path.clone(),
            source,
        })?;
        for (key, value) in parse_env_file(&text).map_err(|(line, message)| SpawnError::EnvFile {
            path: path.clone(),
            line,
            message,
        })? {
            env.insert(key, value);
        }
    }
    for (key, value) in spec.env {
        if !is_env_name(key) {
            return Err(SpawnError::Env {
                message: "a variable name is not valid (letters, digits and _, not starting with a digit)".into(),
            });
        }
        if value.contains('\0') {
            return Err(SpawnError::Env {
                message: format!("{key}: the value contains a NUL byte"),
            });
        }
        env.insert(key.clone(), value.clone());
    }
    Ok(env)
}

/// Parses an env file: `KEY=value` lines, `#` comments and blank lines, an optional `export `,
/// values unquoted (trailing ` # comment` removed, surrounding spaces trimmed), in single quotes
/// (literal) or in double quotes (`\\`, `\"`, `\n`, `\t`, `\r`, `\$` escapes). A later line wins.
/// Errors are `(line number, message)`; messages never contain a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, "expected KEY=value".to_string()));
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err((
                line_no,
                "invalid variable name (letters, digits and _, not starting with a digit)".to_string(),
            ));
        }
        let value = parse_env_value(value.trim_start()).map_err(|message| (line_no, format!("{key}: {message}")))?;
        if value.contains('\0') {
            return Err((line_no, format!("{key}: the value contains a NUL byte")));
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn parse_env_value(text: &str) -> Result<String, String> {
    let rest_is_comment = |rest: &str| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = text.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single quote")?;
        if !rest_is_comment(&body[end + 1..]) {
            return Err("unexpected text after the closing quote".into());
        }
        return Ok(body[..end].to_string());
    }
    if let Some(body) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if !rest_is_comment(&body[i + 1..]) {
                        return Err("unexpected text after the closing quote".into());
                    }
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, other)) => {
                        if !matches!(other, '\\' | '"' | '$' | '`') {
                            value.push('\\');
                        }
                        value.push(other);
                    }
                    None => break,
                },
                _ => value.push(c),
            }
        }
        return Err("unterminated double quote (values span one line)".into());
    }
    // Unquoted: a `#` after whitespace starts a comment.
    let mut end = text.len();
    let mut previous_space = true;
    for (i, c) in text.char_indices() {
        if c == '#' && previous_space {
            end = i;
            break;
        }
        previous_space = c.is_whitespace();
    }
    Ok(text[..end].trim_end().to_string())
}
