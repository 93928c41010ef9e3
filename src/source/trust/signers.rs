//! Signers listed in an allowed-signers file (ssh-keygen(1) "ALLOWED SIGNERS"): parsing the
//! file into entries (principals, options, key), with errors that name the line and column.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, PublicKey};

use super::cursor::{Cursor, LineError};
use super::time::parse_time;
use super::TrustError;

/// The keys allowed to sign commits: ssh-keygen(1) "ALLOWED SIGNERS" format.
#[derive(Clone, Debug)]
pub struct AllowedSigners {
    /// Where the entries were read, for messages (None when parsed from text).
    pub(super) file: Option<PathBuf>,
    pub(super) entries: Vec<AllowedSigner>,
}

/// One line: `principals [options] keytype base64 [comment]`.
#[derive(Clone, Debug)]
pub(super) struct AllowedSigner {
    pub(super) line: usize,
    /// Comma-separated patterns (`*`, `?`, `!negation`), as written.
    pub(super) principals: String,
    /// Comma-separated patterns; None allows every namespace.
    pub(super) namespaces: Option<String>,
    pub(super) valid_after: Option<TimeBound>,
    pub(super) valid_before: Option<TimeBound>,
    pub(super) key: PublicKey,
}

/// A `valid-after`/`valid-before` time: seconds since the epoch, and the text as written.
#[derive(Clone, Debug)]
pub(super) struct TimeBound {
    pub(super) seconds: i64,
    pub(super) text: String,
}

impl AllowedSigners {
    /// Parses the allowed_signers format of ssh-keygen(1) "ALLOWED SIGNERS". Errors name the line
    /// and column. Times without a `Z`/`UTC` suffix are local time, as for ssh-keygen.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        Self::parse_from(text, None)
    }

    /// Reads and parses an allowed-signers file. Errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrustError::ReadAllowedSigners {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse_from(&text, Some(path))
    }

    fn parse_from(text: &str, file: Option<&Path>) -> Result<Self, TrustError> {
        let mut entries = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            match parse_line(line) {
                Ok(Some(entry)) => entries.push(AllowedSigner {
                    line: index + 1,
                    ..entry
                }),
                Ok(None) => {}
                Err(e) => {
                    return Err(TrustError::ParseAllowedSigners {
                        file: file.map(Path::to_path_buf),
                        line: index + 1,
                        column: e.column,
                        message: e.message,
                    })
                }
            }
        }
        Ok(AllowedSigners {
            file: file.map(Path::to_path_buf),
            entries,
        })
    }

    /// How many keys are listed (an empty file trusts no commit).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses one line: None for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<AllowedSigner>, LineError> {
    let mut cur = Cursor { line, pos: 0 };
    cur.skip_space();
    if matches!(cur.peek(), None | Some(b'#')) {
        return Ok(None);
    }

    let principals_at = cur.pos;
    let principals = if cur.peek() == Some(b'"') {
        let rest = line.get(cur.pos + 1..).unwrap_or("");
        let Some(close) = rest.find('"') else {
            return Err(cur.error(principals_at, "the quoted principals have no closing quote"));
        };
        cur.pos += close + 2;
        if !cur.at_space_or_end() {
            return Err(cur.error(cur.pos, "expected a space after the quoted principals"));
        }
        rest.get(..close).unwrap_or("")
    } else {
        cur.word()
    };
    if principals.is_empty() {
        return Err(cur.error(principals_at, "empty principals; expected e.g. alice@example.com"));
    }
    cur.skip_space();
    if cur.peek().is_none() {
        return Err(cur.error(
            cur.pos,
            "missing public key after the principals; expected `principals [options] keytype base64`",
        ));
    }

    // ssh-keygen tries the word after the principals as a key, and else as options.
    let mut options = Options::default();
    let word_at = cur.pos;
    let word = Cursor { line, pos: cur.pos }.word();
    if key_algorithm(word).is_none() {
        if word.ends_with("-cert-v01@openssh.com") {
            return Err(cur.error(
                word_at,
                format!("certificate key type `{word}` is not supported; list the plain public key"),
            ));
        }
        if !starts_with_option(word) {
            return Err(cur.error(
                word_at,
                format!(
                    "expected a key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...) or options (namespaces=, valid-after=, valid-before=), found `{word}`"
                ),
            ));
        }
        options = parse_options(&mut cur)?;
        cur.skip_space();
        if cur.peek().is_none() {
            return Err(cur.error(
                cur.pos,
                "missing public key after the options; expected `keytype base64`",
            ));
        }
    }

    let key = parse_key(&mut cur)?;
    Ok(Some(AllowedSigner {
        line: 0,
        principals: principals.to_string(),
        namespaces: options.namespaces,
        valid_after: options.valid_after,
        valid_before: options.valid_before,
        key,
    }))
}

/// A plain public key type known to ssh-key (never `Other`, which would swallow any word with `@`).
fn key_algorithm(word: &str) -> Option<Algorithm> {
    match Algorithm::new(word) {
        Ok(Algorithm::Other(_)) | Err(_) => None,
        Ok(algorithm) => Some(algorithm),
    }
}

const OPTION_NAMES: [&str; 4] = ["cert-authority", "namespaces=", "valid-after=", "valid-before="];

fn starts_with_option(word: &str) -> bool {
    OPTION_NAMES
        .iter()
        .any(|name| word.get(..name.len()).is_some_and(|s| s.eq_ignore_ascii_case(name)))
}

#[derive(Default)]
struct Options {
    namespaces: Option<String>,
    valid_after: Option<TimeBound>,
    valid_before: Option<TimeBound>,
}

/// `option[,option...]` up to the first unquoted space, as ssh-keygen's sshsigopt_parse reads it
/// (names in any case, values quoted, each option at most once).
fn parse_options(cur: &mut Cursor) -> Result<Options, LineError> {
    let mut options = Options::default();
    loop {
        let at = cur.pos;
        if cur.eat_ignore_case("cert-authority") && matches!(cur.peek(), None | Some(b',' | b' ' | b'\t')) {
            return Err(cur.error(
                at,
                "cert-authority is not supported: list each signer's public key instead of a certificate authority",
            ));
        } else if cur.eat_ignore_case("namespaces=") {
            if options.namespaces.is_some() {
                return Err(cur.error(at, "namespaces is given twice"));
            }
            let value_at = cur.pos;
            let value = cur.quoted("namespaces")?;
            if value.is_empty() {
                return Err(cur.error(
                    value_at,
                    "namespaces=\"\" allows no namespace; expected e.g. namespaces=\"git\"",
                ));
            }
            options.namespaces = Some(value);
        } else if cur.eat_ignore_case("valid-after=") {
            if options.valid_after.is_some() {
                return Err(cur.error(at, "valid-after is given twice"));
            }
            options.valid_after = Some(parse_time_option(cur, "valid-after")?);
        } else if cur.eat_ignore_case("valid-before=") {
            if options.valid_before.is_some() {
                return Err(cur.error(at, "valid-before is given twice"));
            }
            options.valid_before = Some(parse_time_option(cur, "valid-before")?);
        } else {
            cur.pos = at;
            let name = cur.word().split([',', '=']).next().unwrap_or("");
            return Err(cur.error(
                at,
                format!(
                    "unknown option `{name}`; expected namespaces=\"...\", valid-after=\"...\" or valid-before=\"...\""
                ),
            ));
        }
        match cur.peek() {
            None | Some(b' ' | b'\t') => return Ok(options),
            // A trailing comma ends the list, as for ssh-keygen.
            Some(b',') => {
                cur.pos += 1;
                if cur.at_space_or_end() {
                    return Ok(options);
                }
            }
            Some(_) => return Err(cur.error(cur.pos, "expected `,` or a space after the option")),
        }
    }
}

fn parse_time_option(cur: &mut Cursor, option: &str) -> Result<TimeBound, LineError> {
    let value_at = cur.pos;
    let text = cur.quoted(option)?;
    match parse_time(&text) {
        Some(seconds) => Ok(TimeBound { seconds, text }),
        None => Err(cur.error(
            value_at,
            format!("invalid {option} time \"{text}\"; expected YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS, optionally followed by Z for UTC"),
        )),
    }
}

/// `keytype base64 [comment]`: the key type must match the key inside the base64 blob.
fn parse_key(cur: &mut Cursor) -> Result<PublicKey, LineError> {
    let type_at = cur.pos;
    let key_type = cur.word();
    if key_type.ends_with("-cert-v01@openssh.com") {
        return Err(cur.error(
            type_at,
            format!("certificate key type `{key_type}` is not supported; list the plain public key"),
        ));
    }
    if key_algorithm(key_type).is_none() {
        return Err(cur.error(
            type_at,
            format!("unknown key type `{key_type}`; expected ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ..."),
        ));
    }
    cur.skip_space();
    let data_at = cur.pos;
    let data = cur.word();
    if data.is_empty() {
        return Err(cur.error(data_at, format!("missing the base64 key data after `{key_type}`")));
    }
    // ssh-key's parser wants exactly one space between fields, so hand it the two fields alone.
    PublicKey::from_openssh(&format!("{key_type} {data}")).map_err(|e| {
        let message = match e {
            // The type is known (checked above), so the blob holds another one.
            ssh_key::Error::AlgorithmUnknown => format!("the key data is not a {key_type} key"),
            e => format!("invalid {key_type} public key: {e}"),
        };
        cur.error(data_at, message)
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fixed ed25519 public key for the parser tests (no signing needed there).
    pub(in crate::source::trust) const FIXED_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGs5EO1qYRoTs6B/4+CnXS2bnfzheuSVWNvckdsGCXYq";
    const ALICE: &str = "alice@example.com";

    /// `entry key` as one allowed-signers line.
    pub(in crate::source::trust) fn line_of(entry: &str, key: &str) -> String {
        format!("{entry} {key}\n")
    }

    #[test]
    fn parse_reads_entries_options_and_comments() {
        let text = format!(
            "# comment\n\n   \t\n{}{}dave@example.com\tVALID-BEFORE=\"20300101120000UTC\"\t{FIXED_KEY} dave's laptop\r\n{}",
            line_of("alice@example.com,bob@example.com", FIXED_KEY),
            line_of("\"carol@example.com\" namespaces=\"git,file\",valid-after=\"20240101\"", FIXED_KEY),
            "  *@example.org valid-after=\"20240101Z\", ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGs5EO1qYRoTs6B/4+CnXS2bnfzheuSVWNvckdsGCXYq"
        );
        let allowed = AllowedSigners::parse(&text).expect("parses");
        assert_eq!(allowed.len(), 4);
        let lines: Vec<usize> = allowed.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        assert_eq!(allowed.entries[1].principals, "carol@example.com");
        assert_eq!(allowed.entries[1].namespaces.as_deref(), Some("git,file"));
        assert_eq!(
            allowed.entries[3].valid_after.as_ref().map(|b| b.seconds),
            Some(1_704_067_200)
        );
        assert!(AllowedSigners::parse("").expect("empty").is_empty());
    }

    /// (text, line, column, part of the message)
    fn assert_parse_error(text: &str, line: usize, column: usize, message: &str) {
        match AllowedSigners::parse(text) {
            Err(TrustError::ParseAllowedSigners {
                file: None,
                line: l,
                column: c,
                message: m,
            }) => {
                assert_eq!((l, c), (line, column), "{text:?}: {m}");
                assert!(m.contains(message), "{text:?}: {m:?} lacks {message:?}");
            }
            other => panic!("{text:?}: expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors_name_line_and_column() {
        let key = FIXED_KEY;
        assert_eq!(
            AllowedSigners::parse("\nbob").unwrap_err().to_string(),
            "allowed signers line 2, column 4: missing public key after the principals; expected `principals [options] keytype base64`"
        );
        assert_parse_error(
            "# ok\nalice@example.com\n",
            2,
            18,
            "missing public key after the principals",
        );
        assert_parse_error(
            &format!("alice {key}\nbob foo=\"x\" {key}"),
            2,
            5,
            "expected a key type",
        );
        assert_parse_error(
            &format!("bob namespaces=\"git\",foo=\"x\" {key}"),
            1,
            22,
            "unknown option `foo`",
        );
        assert_parse_error(&format!("bob valid-after=20240101 {key}"), 1, 17, "must be quoted");
        assert_parse_error(
            &format!("bob valid-after=\"20241301\" {key}"),
            1,
            17,
            "invalid valid-after time",
        );
        assert_parse_error(
            &format!("bob valid-before=\"2024\" {key}"),
            1,
            18,
            "invalid valid-before time",
        );
        assert_parse_error(&format!("bob namespaces=\"git {key}"), 1, 16, "no closing quote");
        assert_parse_error(&format!("bob namespaces=\"\" {key}"), 1, 16, "allows no namespace");
        assert_parse_error(
            &format!("bob namespaces=\"a\",namespaces=\"b\" {key}"),
            1,
            20,
            "given twice",
        );
        assert_parse_error(
            &format!("bob cert-authority {key}"),
            1,
            5,
            "cert-authority is not supported",
        );
        assert_parse_error(
            &format!("bob namespaces=\"git\";x {key}"),
            1,
            21,
            "expected `,` or a space",
        );
        assert_parse_error("bob namespaces=\"git\"", 1, 21, "missing public key after the options");
        assert_parse_error("bob ssh-ed25519", 1, 16, "missing the base64 key data");
        assert_parse_error("bob ssh-ed25519 AAAA!!", 1, 17, "invalid ssh-ed25519 public key");
        assert_parse_error(
            "bob ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGs5EO1qYRoTs6B/4+CnXS2bnfzheuSVWNvckdsGCXYq",
            1,
            13,
            "the key data is not a ssh-rsa key",
        );
        assert_parse_error("bob ssh-ed25519-cert-v01@openssh.com AAAA", 1, 5, "certificate");
        assert_parse_error(&format!("\"bob {key}"), 1, 1, "no closing quote");
        assert_parse_error(&format!("\"\" {key}"), 1, 1, "empty principals");
        assert_parse_error(
            &format!("ünïcode namespaces=\"git\",ẍ=\"1\" {key}"),
            1,
            26,
            "unknown option `ẍ`",
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let error = AllowedSigners::load(&missing).unwrap_err();
        assert!(matches!(error, TrustError::ReadAllowedSigners { .. }), "{error:?}");
        assert!(error.to_string().contains(&missing.display().to_string()), "{error}");

        let path = dir.path().join("allowed_signers");
        std::fs::write(
            &path,
            format!("# team\n{}bob {FIXED_KEY}x!\n", line_of(ALICE, FIXED_KEY)),
        )
        .expect("write");
        let error = AllowedSigners::load(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:3:17: invalid ssh-ed25519 public key", path.display())),
            "{error}"
        );
    }

    #[test]
    fn parse_never_panics_on_truncated_or_odd_lines() {
        let lines = [
            format!("\"ä,b\" NaMeSpAcEs=\"g\\\"it\",valid-after=\"20240229\",valid-before=\"20991231235959utc\" {FIXED_KEY} c"),
            format!("* cert-authority,namespaces=\"x\" {FIXED_KEY}"),
            "é\t\"\"\t\"".to_string(),
        ];
        for line in &lines {
            for (end, _) in line.char_indices() {
                let _ = AllowedSigners::parse(&line[..end]);
            }
        }
    }
}
