//! Optional trust (DESIGN.md §6): verifies a commit's SSH signature against an allowed-signers
//! file, as `git verify-commit` does with `gpg.format=ssh` and `gpg.ssh.allowedSignersFile`
//! (which runs `ssh-keygen -Y verify -n git`). A commit that does not verify is not applied.
//!
//! Stricter than git in one way: git reports whichever principal the allowed-signers file lists
//! for the key, whoever committed; here a principal pattern must match the committer email, so a
//! key allowed for alice cannot vouch for a commit that claims to be bob's.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{ErrorCode, Oid, Repository};
use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const GIT_NAMESPACE: &str = "git";
const SSH_SIGNATURE_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const SSH_SIGNATURE_END: &str = "-----END SSH SIGNATURE-----";
/// The line width the PEM decoder of ssh-key insists on (what ssh-keygen writes).
const PEM_LINE_WIDTH: usize = 70;

/// Why a commit is not trusted, or why the allowed-signers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the allowed signers file {}: {message}", path.display())]
    ReadAllowedSigners { path: PathBuf, message: String },
    #[error("{}: {message}", place_column(file.as_deref(), *line, *column))]
    ParseAllowedSigners {
        file: Option<PathBuf>,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read commit {commit}: {message}")]
    ReadCommit { commit: String, message: String },
    #[error(
        "commit {}: not signed; expected an SSH signature (git commit -S with gpg.format=ssh)",
        short(commit)
    )]
    Unsigned { commit: String },
    #[error(
        "commit {}: the signature is {kind} signature; only SSH signatures are supported (sign with gpg.format=ssh)",
        short(commit)
    )]
    NotSsh { commit: String, kind: &'static str },
    #[error("commit {}: malformed SSH signature: {message}", short(commit))]
    MalformedSignature { commit: String, message: String },
    #[error(
        "commit {}: the signature was made for namespace \"{namespace}\"; commit signatures must use namespace \"git\"",
        short(commit)
    )]
    SignatureNamespace { commit: String, namespace: String },
    #[error("commit {}: signed with a {key_type} key ({fingerprint}), which cannot be verified here; supported key types: ssh-ed25519, sk-ssh-ed25519@openssh.com, ssh-rsa, ecdsa-sha2-nistp256/384/521", short(commit))]
    UnsupportedKeyType {
        commit: String,
        key_type: String,
        fingerprint: String,
    },
    #[error("commit {}: the signature does not verify with its key {fingerprint}: the commit was changed after signing, or the signature is corrupt", short(commit))]
    BadSignature { commit: String, fingerprint: String },
    #[error("commit {}: signed with {key_type} key {fingerprint}, which is not listed in {}", short(commit), signers_file(file.as_deref()))]
    KeyNotAllowed {
        commit: String,
        key_type: String,
        fingerprint: String,
        file: Option<PathBuf>,
    },
    #[error(
        "commit {}: key {fingerprint} is allowed only for {principals}, not for committer email {email}",
        short(commit)
    )]
    PrincipalMismatch {
        commit: String,
        fingerprint: String,
        principals: String,
        email: String,
    },
    #[error("commit {}: {entry}: key {fingerprint} is allowed only for namespaces \"{namespaces}\", which do not include \"git\"", short(commit))]
    NamespaceNotAllowed {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        namespaces: String,
    },
    #[error("commit {}: {entry}: key {fingerprint} is not valid yet at the commit time: committed {}, valid-after=\"{valid_after}\"", short(commit), format_utc(*committed_at))]
    NotYetValid {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        valid_after: String,
        /// Committer time, seconds since the epoch.
        committed_at: i64,
    },
    #[error("commit {}: {entry}: key {fingerprint} had expired at the commit time: committed {}, valid-before=\"{valid_before}\"", short(commit), format_utc(*committed_at))]
    Expired {
        commit: String,
        fingerprint: String,
        entry: SignerLine,
        valid_before: String,
        /// Committer time, seconds since the epoch.
        committed_at: i64,
    },
}

/// The allowed-signers line an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerLine {
    /// None when the entries were parsed from text.
    pub file: Option<PathBuf>,
    pub line: usize,
}

impl fmt::Display for SignerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&place(self.file.as_deref(), self.line))
    }
}

/// `FILE:LINE` for a loaded file, `allowed signers line LINE` for parsed text.
fn place(file: Option<&Path>, line: usize) -> String {
    match file {
        Some(file) => format!("{}:{line}", file.display()),
        None => format!("allowed signers line {line}"),
    }
}

/// `FILE:LINE:COLUMN`, or `allowed signers line LINE, column COLUMN` for parsed text.
fn place_column(file: Option<&Path>, line: usize, column: usize) -> String {
    match file {
        Some(file) => format!("{}:{line}:{column}", file.display()),
        None => format!("allowed signers line {line}, column {column}"),
    }
}

fn signers_file(file: Option<&Path>) -> String {
    match file {
        Some(file) => format!("the allowed signers file {}", file.display()),
        None => "the allowed signers".to_string(),
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The keys allowed to sign commits: ssh-keygen(1) "ALLOWED SIGNERS" format.
#[derive(Clone, Debug)]
pub struct AllowedSigners {
    /// Where the entries were read, for messages (None when parsed from text).
    file: Option<PathBuf>,
    entries: Vec<AllowedSigner>,
}

/// One line: `principals [options] keytype base64 [comment]`.
#[derive(Clone, Debug)]
struct AllowedSigner {
    line: usize,
    /// Comma-separated patterns (`*`, `?`, `!negation`), as written.
    principals: String,
    /// Comma-separated patterns; None allows every namespace.
    namespaces: Option<String>,
    valid_after: Option<TimeBound>,
    valid_before: Option<TimeBound>,
    key: PublicKey,
}

/// A `valid-after`/`valid-before` time: seconds since the epoch, and the text as written.
#[derive(Clone, Debug)]
struct TimeBound {
    seconds: i64,
    text: String,
}

/// A parse problem within one line (the line number is added by the caller).
struct LineError {
    column: usize,
    message: String,
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

/// A byte position within one line; every delimiter looked for is ASCII, so positions stay on
/// character boundaries.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn at_space_or_end(&self) -> bool {
        matches!(self.peek(), None | Some(b' ' | b'\t'))
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// The text up to the next space or tab.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while !self.at_space_or_end() {
            self.pos += 1;
        }
        self.line.get(start..self.pos).unwrap_or("")
    }

    /// Consumes `prefix` (ASCII, any case) if the line continues with it.
    fn eat_ignore_case(&mut self, prefix: &str) -> bool {
        let end = self.pos + prefix.len();
        match self.line.get(self.pos..end) {
            Some(s) if s.eq_ignore_ascii_case(prefix) => {
                self.pos = end;
                true
            }
            _ => false,
        }
    }

    /// 1-based column (in characters) of a byte position.
    fn column_of(&self, pos: usize) -> usize {
        self.line.get(..pos).map_or(pos, |s| s.chars().count()) + 1
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> LineError {
        LineError {
            column: self.column_of(pos),
            message: message.into(),
        }
    }

    /// A double-quoted option value (`\"` escapes a quote), as ssh-keygen's opt_dequote reads it.
    fn quoted(&mut self, option: &str) -> Result<String, LineError> {
        if self.peek() != Some(b'"') {
            return Err(self.error(
                self.pos,
                format!("the value of {option} must be quoted, e.g. {option}=\"...\""),
            ));
        }
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        let mut rest = self.line.get(self.pos..).unwrap_or("").char_indices();
        while let Some((offset, c)) = rest.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return Ok(value);
                }
                '\\' if self.line.as_bytes().get(self.pos + offset + 1) == Some(&b'"') => {
                    rest.next();
                    value.push('"');
                }
                c => value.push(c),
            }
        }
        Err(self.error(open, format!("the value of {option} has no closing quote")))
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

/// ssh-keygen's parse_absolute_time: `YYYYMMDD[HHMM[SS]]`, UTC with a `Z` or `UTC` suffix,
/// else local time. None when invalid (or at the epoch, which ssh-keygen reads as "unset").
fn parse_time(text: &str) -> Option<i64> {
    let upper = text.to_ascii_uppercase();
    let (digits, utc) = match upper.strip_suffix("UTC").or_else(|| upper.strip_suffix('Z')) {
        Some(digits) => (digits, true),
        None => (upper.as_str(), false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| digits.get(range).and_then(|s| s.parse::<i64>().ok());
    let year = field(0..4)?;
    let month = field(4..6)?;
    let day = field(6..8)?;
    let hour = if digits.len() >= 12 { field(8..10)? } else { 0 };
    let minute = if digits.len() >= 12 { field(10..12)? } else { 0 };
    let second = if digits.len() == 14 { field(12..14)? } else { 0 };
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = if utc {
        days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
    } else {
        local_time(year, month, day, hour, minute, second)?
    };
    (seconds > 0).then_some(seconds)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Local wall-clock time to seconds since the epoch (mktime, as ssh-keygen does).
fn local_time(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<i64> {
    // SAFETY: `tm` is plain old data; zeroed is a valid value for every field, and mktime only
    // reads and normalises the struct it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = i32::try_from(year - 1900).ok()?;
    tm.tm_mon = i32::try_from(month - 1).ok()?;
    tm.tm_mday = i32::try_from(day).ok()?;
    tm.tm_hour = i32::try_from(hour).ok()?;
    tm.tm_min = i32::try_from(minute).ok()?;
    tm.tm_sec = i32::try_from(second).ok()?;
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed struct for the duration of the call.
    let seconds = unsafe { libc::mktime(&mut tm) };
    (seconds != -1).then_some(seconds)
}

/// `2024-06-01 12:00:00 UTC`, for messages.
fn format_utc(seconds: i64) -> String {
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// The OpenSSH match_pattern: `*` any run of characters, `?` any one character, case-sensitive.
fn match_pattern(text: &str, pattern: &str) -> bool {
    crate::spec::common::glob_matches(pattern, text)
}

/// The OpenSSH match_pattern_list: comma-separated patterns, `!pattern` excludes. True when some
/// pattern matches and no negated one does.
fn match_pattern_list(text: &str, list: &str) -> bool {
    let mut positive = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if match_pattern(text, negated) => return false,
            Some(_) => {}
            None => positive |= match_pattern(text, pattern),
        }
    }
    positive
}

/// Who signed a verified commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The committer email, which a principal pattern of the key's entry matched.
    pub principal: String,
    /// `SHA256:...`, as ssh-keygen -l prints it.
    pub fingerprint: String,
    /// The SSH key type, e.g. `ssh-ed25519`.
    pub key_type: String,
}

/// Verifies the signature of `commit` (a full SHA) in `repo`: an SSH signature in namespace "git"
/// over the commit's signed data, made by a key in `allowed` that is listed for the committer
/// email, allowed for namespace "git", and valid at the committer time. Several entries may list
/// the same key; any one that allows the commit is enough (as for ssh-keygen).
pub fn verify_commit(repo: &Repository, commit: &str, allowed: &AllowedSigners) -> Result<Verified, TrustError> {
    let read_error = |message: String| TrustError::ReadCommit {
        commit: commit.to_string(),
        message,
    };
    // A short id would be padded with zeros by Oid::from_str; only a full one names one commit.
    if !matches!(commit.len(), 40 | 64) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(read_error("not a full commit id (40 or 64 hex digits)".to_string()));
    }
    let oid = Oid::from_str(commit).map_err(|e| read_error(e.message().to_string()))?;
    let found = repo.find_commit(oid).map_err(|e| read_error(e.message().to_string()))?;
    let committer = found.committer();
    let email = String::from_utf8_lossy(committer.email_bytes()).into_owned();
    let committed_at = committer.when().seconds();

    let (signature, signed_data) = match repo.extract_signature(&oid, None) {
        Ok(parts) => parts,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(TrustError::Unsigned {
                commit: commit.to_string(),
            })
        }
        Err(e) => return Err(read_error(e.message().to_string())),
    };
    let malformed = |message: String| TrustError::MalformedSignature {
        commit: commit.to_string(),
        message,
    };
    let signature = std::str::from_utf8(&signature).map_err(|_| malformed("not UTF-8 text".to_string()))?;
    if let Some(kind) = foreign_signature_kind(signature) {
        return Err(TrustError::NotSsh {
            commit: commit.to_string(),
            kind,
        });
    }
    let signature = decode_ssh_signature(signature).map_err(malformed)?;
    if signature.namespace() != GIT_NAMESPACE {
        return Err(TrustError::SignatureNamespace {
            commit: commit.to_string(),
            namespace: signature.namespace().to_string(),
        });
    }

    // The signature carries its key; check the signature with it first, then whether it is allowed.
    let signing_key = PublicKey::from(signature.public_key().clone());
    let fingerprint = signing_key.fingerprint(HashAlg::Sha256).to_string();
    let key_type = signing_key.algorithm().as_str().to_string();
    match signing_key.verify(GIT_NAMESPACE, &signed_data, &signature) {
        Ok(()) => {}
        Err(ssh_key::Error::AlgorithmUnsupported { algorithm }) => {
            return Err(TrustError::UnsupportedKeyType {
                commit: commit.to_string(),
                key_type: algorithm.as_str().to_string(),
                fingerprint,
            })
        }
        Err(_) => {
            return Err(TrustError::BadSignature {
                commit: commit.to_string(),
                fingerprint,
            })
        }
    }

    let listed: Vec<&AllowedSigner> = allowed
        .entries
        .iter()
        .filter(|entry| entry.key.key_data() == signature.public_key())
        .collect();
    if listed.is_empty() {
        return Err(TrustError::KeyNotAllowed {
            commit: commit.to_string(),
            key_type,
            fingerprint,
            file: allowed.file.clone(),
        });
    }
    // Any entry that names the committer and allows the commit is enough (as for ssh-keygen);
    // when all refuse it, the first one's reason is reported.
    let mut first_refusal: Option<(usize, Refusal)> = None;
    for entry in listed
        .iter()
        .filter(|entry| match_pattern_list(&email, &entry.principals))
    {
        match entry_refusal(entry, committed_at) {
            None => {
                return Ok(Verified {
                    principal: email,
                    fingerprint,
                    key_type,
                })
            }
            Some(refusal) => {
                first_refusal.get_or_insert((entry.line, refusal));
            }
        }
    }
    let Some((line, refusal)) = first_refusal else {
        let principals: Vec<&str> = listed.iter().map(|entry| entry.principals.as_str()).collect();
        return Err(TrustError::PrincipalMismatch {
            commit: commit.to_string(),
            fingerprint,
            principals: principals.join(", "),
            email,
        });
    };
    let commit = commit.to_string();
    let entry = SignerLine {
        file: allowed.file.clone(),
        line,
    };
    Err(match refusal {
        Refusal::Namespace(namespaces) => TrustError::NamespaceNotAllowed {
            commit,
            fingerprint,
            entry,
            namespaces,
        },
        Refusal::NotYetValid(valid_after) => TrustError::NotYetValid {
            commit,
            fingerprint,
            entry,
            valid_after,
            committed_at,
        },
        Refusal::Expired(valid_before) => TrustError::Expired {
            commit,
            fingerprint,
            entry,
            valid_before,
            committed_at,
        },
    })
}

/// Why an entry (whose key and principal match) does not allow a commit.
enum Refusal {
    Namespace(String),
    NotYetValid(String),
    Expired(String),
}

/// ssh-keygen's order: namespaces, then valid-after, then valid-before (both bounds inclusive).
fn entry_refusal(entry: &AllowedSigner, committed_at: i64) -> Option<Refusal> {
    if let Some(namespaces) = &entry.namespaces {
        if !match_pattern_list(GIT_NAMESPACE, namespaces) {
            return Some(Refusal::Namespace(namespaces.clone()));
        }
    }
    if let Some(after) = &entry.valid_after {
        if committed_at < after.seconds {
            return Some(Refusal::NotYetValid(after.text.clone()));
        }
    }
    if let Some(before) = &entry.valid_before {
        if committed_at > before.seconds {
            return Some(Refusal::Expired(before.text.clone()));
        }
    }
    None
}

/// The kind of a signature git knows but that is not SSH (git's own detection by armor line).
fn foreign_signature_kind(signature: &str) -> Option<&'static str> {
    let start = signature.trim_start();
    if start.starts_with(SSH_SIGNATURE_BEGIN) {
        None
    } else if start.starts_with("-----BEGIN PGP SIGNATURE-----") || start.starts_with("-----BEGIN PGP MESSAGE-----") {
        Some("an OpenPGP (gpg)")
    } else if start.starts_with("-----BEGIN SIGNED MESSAGE-----") {
        Some("an X.509 (gpgsm)")
    } else {
        Some("an unrecognised")
    }
}

/// Decodes the armored signature, re-wrapping the base64 at the width the PEM decoder insists on
/// (ssh-keygen only joins the lines, so other signers' wrapping is accepted there too).
fn decode_ssh_signature(armored: &str) -> Result<SshSig, String> {
    let body = armored
        .trim()
        .strip_prefix(SSH_SIGNATURE_BEGIN)
        .ok_or_else(|| format!("expected it to start with {SSH_SIGNATURE_BEGIN}"))?
        .strip_suffix(SSH_SIGNATURE_END)
        .ok_or_else(|| format!("expected it to end with {SSH_SIGNATURE_END}"))?;
    let base64: Vec<char> = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if base64.is_empty() {
        return Err("no signature data between the armor lines".to_string());
    }
    let mut pem = String::with_capacity(base64.len() + base64.len() / PEM_LINE_WIDTH + 64);
    pem.push_str(SSH_SIGNATURE_BEGIN);
    pem.push('\n');
    for chunk in base64.chunks(PEM_LINE_WIDTH) {
        pem.extend(chunk);
        pem.push('\n');
    }
    pem.push_str(SSH_SIGNATURE_END);
    pem.push('\n');
    SshSig::from_pem(&pem).map_err(|e| format!("cannot decode the signature: {e}"))
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "good signature for {} with {} key {}",
            self.principal, self.key_type, self.fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    /// The committer (and author) time of every test commit: 2024-06-01 12:00:00 UTC.
    const COMMITTED_AT: i64 = 1_717_243_200;
    const ALICE: &str = "alice@example.com";
    /// A fixed ed25519 public key for the parser tests (no signing needed there).
    const FIXED_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGs5EO1qYRoTs6B/4+CnXS2bnfzheuSVWNvckdsGCXYq";

    /// A temp dir with a git repository and keys; git and ssh-keygen run isolated from the
    /// machine's configuration and ssh-agent.
    struct Sandbox {
        dir: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            let sandbox = Sandbox {
                dir: tempfile::tempdir().expect("temp dir"),
            };
            sandbox.git(&["init", "-q", "repo"], sandbox.dir.path());
            sandbox
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn repo(&self) -> Repository {
            Repository::open(self.path("repo")).expect("open repo")
        }

        fn command(&self, program: &str) -> Command {
            let mut command = Command::new(program);
            command
                .env("HOME", self.dir.path())
                .env("XDG_CONFIG_HOME", self.dir.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", self.dir.path().join("gitconfig"))
                .env_remove("GIT_CONFIG_PARAMETERS")
                .env_remove("GIT_CONFIG_COUNT")
                .env("GIT_AUTHOR_DATE", format!("{COMMITTED_AT} +0000"))
                .env("GIT_COMMITTER_DATE", format!("{COMMITTED_AT} +0000"))
                .env_remove("SSH_AUTH_SOCK")
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .env_remove("GIT_INDEX_FILE");
            command
        }

        fn run(&self, mut command: Command) -> String {
            let output = command
                .output()
                .expect("run (git and ssh-keygen are needed for these tests)");
            assert!(
                output.status.success(),
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        }

        fn git(&self, args: &[&str], dir: &Path) -> String {
            let mut command = self.command("git");
            command.args(args).current_dir(dir);
            self.run(command)
        }

        /// A new key pair (`ssh-keygen -t TYPE`); returns the private key's path.
        fn key(&self, name: &str, key_type: &[&str]) -> PathBuf {
            let path = self.path(name);
            let mut command = self.command("ssh-keygen");
            command
                .args(["-q", "-N", "", "-C", name, "-t"])
                .args(key_type)
                .arg("-f")
                .arg(&path);
            self.run(command);
            path
        }

        fn public_key(&self, key: &Path) -> String {
            std::fs::read_to_string(key.with_extension("pub"))
                .expect("read public key")
                .trim()
                .to_string()
        }

        /// The SHA256 fingerprint as `ssh-keygen -l` prints it.
        fn fingerprint(&self, key: &Path) -> String {
            let mut command = self.command("ssh-keygen");
            command.arg("-lf").arg(key.with_extension("pub"));
            let line = self.run(command);
            line.split_whitespace().nth(1).expect("fingerprint field").to_string()
        }

        /// A commit by `email` on the current branch, signed by `key` with the real git CLI.
        fn commit(&self, key: Option<&Path>, email: &str, message: &str) -> String {
            let repo = self.path("repo");
            let email_config = format!("user.email={email}");
            let mut args = vec![
                "-c",
                "user.name=Test",
                "-c",
                &email_config,
                "-c",
                "commit.gpgsign=false",
                "-c",
                "gpg.format=ssh",
            ];
            let signing_key;
            if let Some(key) = key {
                signing_key = format!("user.signingkey={}", key.with_extension("pub").display());
                args.extend(["-c", &signing_key]);
            }
            args.extend(["commit", "-q", "--allow-empty", "-m", message]);
            if key.is_some() {
                args.push("-S");
            }
            self.git(&args, &repo);
            self.git(&["rev-parse", "HEAD"], &repo)
        }

        /// Writes `text` as `allowed_signers` and loads it.
        fn allowed(&self, text: &str) -> AllowedSigners {
            let path = self.path("allowed_signers");
            std::fs::write(&path, text).expect("write allowed signers");
            AllowedSigners::load(&path).expect("allowed signers")
        }

        /// Whether `ssh-keygen -Y verify` (what git runs) accepts the commit's signature for
        /// `principal` with the `allowed_signers` written last.
        fn ssh_keygen_accepts(&self, commit: &str, principal: &str) -> bool {
            let repo = self.repo();
            let oid = Oid::from_str(commit).expect("oid");
            let (signature, data) = repo.extract_signature(&oid, None).expect("signed commit");
            let signature_path = self.path("commit.sig");
            std::fs::write(&signature_path, &*signature).expect("write signature");
            let mut command = self.command("ssh-keygen");
            command
                .args(["-Y", "verify", "-n", "git", "-I", principal, "-f"])
                .arg(self.path("allowed_signers"))
                .arg("-s")
                .arg(&signature_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = command.spawn().expect("ssh-keygen");
            child.stdin.take().expect("stdin").write_all(&data).expect("write data");
            child.wait().expect("wait for ssh-keygen").success()
        }

        /// A commit object with `signature` in its gpgsig header, written with git2.
        fn commit_with_signature(&self, signature: &str) -> String {
            let repo = self.repo();
            let content = self.unsigned_content(&repo);
            repo.commit_signed(&content, signature, None)
                .expect("commit_signed")
                .to_string()
        }

        fn unsigned_content(&self, repo: &Repository) -> String {
            let tree_id = repo.treebuilder(None).and_then(|b| b.write()).expect("empty tree");
            let tree = repo.find_tree(tree_id).expect("tree");
            let person = git2::Signature::new("Test", ALICE, &git2::Time::new(COMMITTED_AT, 0)).expect("signature");
            let buffer = repo
                .commit_create_buffer(&person, &person, "crafted\n", &tree, &[])
                .expect("commit buffer");
            String::from_utf8(buffer.to_vec()).expect("utf-8 commit")
        }
    }

    fn line_of(entry: &str, key: &str) -> String {
        format!("{entry} {key}\n")
    }

    #[test]
    fn good_signature_verifies_with_principal_and_fingerprint() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let commit = sandbox.commit(Some(&key), ALICE, "signed");
        let allowed = sandbox.allowed(&format!("# the team\n\n{}", line_of(ALICE, &sandbox.public_key(&key))));

        let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
        assert_eq!(
            verified,
            Verified {
                principal: ALICE.to_string(),
                fingerprint: sandbox.fingerprint(&key),
                key_type: "ssh-ed25519".to_string(),
            }
        );
        assert!(verified.fingerprint.starts_with("SHA256:"));
        assert!(sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");
    }

    #[test]
    fn rsa_signature_verifies() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice-rsa", &["rsa", "-b", "2048"]);
        let commit = sandbox.commit(Some(&key), ALICE, "signed with rsa");
        let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

        let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
        assert_eq!(verified.key_type, "ssh-rsa");
        assert_eq!(verified.fingerprint, sandbox.fingerprint(&key));
        assert!(sandbox.ssh_keygen_accepts(&commit, ALICE));
    }

    #[test]
    fn ecdsa_signatures_verify() {
        for bits in ["256", "384", "521"] {
            let sandbox = Sandbox::new();
            let key = sandbox.key("alice-ecdsa", &["ecdsa", "-b", bits]);
            let commit = sandbox.commit(Some(&key), ALICE, "signed with ecdsa");
            let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));
            let verified = verify_commit(&sandbox.repo(), &commit, &allowed).expect("verifies");
            assert_eq!(verified.key_type, format!("ecdsa-sha2-nistp{bits}"));
            assert_eq!(verified.fingerprint, sandbox.fingerprint(&key));
        }
    }

    #[test]
    fn unsigned_commit_is_refused() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let commit = sandbox.commit(None, ALICE, "unsigned");
        let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

        let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
        assert!(matches!(error, TrustError::Unsigned { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "commit {}: not signed; expected an SSH signature (git commit -S with gpg.format=ssh)",
                &commit[..12]
            )
        );
    }

    #[test]
    fn key_not_in_allowed_signers_is_refused_naming_its_fingerprint() {
        let sandbox = Sandbox::new();
        let alice = sandbox.key("alice", &["ed25519"]);
        let mallory = sandbox.key("mallory", &["ed25519"]);
        let commit = sandbox.commit(Some(&mallory), ALICE, "signed by someone else");
        let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&alice)));

        let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
        let fingerprint = sandbox.fingerprint(&mallory);
        assert!(
            matches!(&error, TrustError::KeyNotAllowed { fingerprint: f, .. } if *f == fingerprint),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&fingerprint), "{message}");
        assert!(message.contains("allowed_signers"), "{message}");
        assert!(!sandbox.ssh_keygen_accepts(&commit, ALICE));
    }

    #[test]
    fn tampered_commit_does_not_verify() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let commit = sandbox.commit(Some(&key), ALICE, "deploy v1");
        sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));
        let repo = sandbox.repo();

        // Same object, gpgsig header kept, message changed: what an attacker with push access could write.
        let odb = repo.odb().expect("odb");
        let original = odb.read(Oid::from_str(&commit).expect("oid")).expect("read commit");
        let text = std::str::from_utf8(original.data()).expect("utf-8 commit");
        assert!(text.contains("-----BEGIN SSH SIGNATURE-----"));
        let tampered_text = text.replace("deploy v1", "deploy v2");
        let tampered = odb
            .write(git2::ObjectType::Commit, tampered_text.as_bytes())
            .expect("write tampered commit")
            .to_string();
        assert_ne!(tampered, commit);

        let allowed = AllowedSigners::load(&sandbox.path("allowed_signers")).expect("allowed");
        let error = verify_commit(&repo, &tampered, &allowed).unwrap_err();
        assert!(matches!(error, TrustError::BadSignature { .. }), "{error:?}");
        assert!(error.to_string().contains("changed after signing"), "{error}");
        assert!(
            verify_commit(&repo, &commit, &allowed).is_ok(),
            "the original still verifies"
        );
        assert!(sandbox.ssh_keygen_accepts(&commit, ALICE));
        assert!(
            !sandbox.ssh_keygen_accepts(&tampered, ALICE),
            "ssh-keygen agrees: tampered"
        );
    }

    #[test]
    fn namespaces_must_allow_git() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let public = sandbox.public_key(&key);
        let commit = sandbox.commit(Some(&key), ALICE, "signed");
        let repo = sandbox.repo();

        let file_only = sandbox.allowed(&line_of(&format!("{ALICE} namespaces=\"file\""), &public));
        let error = verify_commit(&repo, &commit, &file_only).unwrap_err();
        assert!(
            matches!(&error, TrustError::NamespaceNotAllowed { namespaces, entry, .. } if namespaces == "file" && entry.line == 1),
            "{error:?}"
        );
        assert!(error.to_string().contains("allowed_signers:1"), "{error}");
        assert!(!sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");

        // Another entry for the same key that allows git is enough, as for ssh-keygen.
        let two_entries = sandbox.allowed(&format!(
            "{}{}",
            line_of(&format!("{ALICE} namespaces=\"file\""), &public),
            line_of(&format!("{ALICE} NAMESPACES=\"file,g?t\""), &public)
        ));
        assert!(verify_commit(&repo, &commit, &two_entries).is_ok());
        assert!(sandbox.ssh_keygen_accepts(&commit, ALICE), "ssh-keygen agrees");
    }

    #[test]
    fn validity_window_must_contain_the_commit_time() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let public = sandbox.public_key(&key);
        let commit = sandbox.commit(Some(&key), ALICE, "signed 2024-06-01");
        let repo = sandbox.repo();
        let with =
            |options: &str| AllowedSigners::parse(&line_of(&format!("{ALICE} {options}"), &public)).expect("parse");

        let error = verify_commit(&repo, &commit, &with("valid-before=\"20240101Z\"")).unwrap_err();
        assert!(matches!(error, TrustError::Expired { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("committed 2024-06-01 12:00:00 UTC"), "{message}");
        assert!(message.contains("valid-before=\"20240101Z\""), "{message}");
        assert!(message.contains("allowed signers line 1"), "{message}");

        let error = verify_commit(&repo, &commit, &with("valid-after=\"20250101Z\"")).unwrap_err();
        assert!(matches!(error, TrustError::NotYetValid { .. }), "{error:?}");

        let window = with("valid-after=\"20240101Z\",valid-before=\"202406011200Z\"");
        assert!(
            verify_commit(&repo, &commit, &window).is_ok(),
            "both bounds are inclusive"
        );
        let error = verify_commit(&repo, &commit, &with("valid-before=\"20240601115959Z\"")).unwrap_err();
        assert!(matches!(error, TrustError::Expired { .. }), "{error:?}");
    }

    #[test]
    fn principal_patterns_match_the_committer_email() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let public = sandbox.public_key(&key);
        let commit = sandbox.commit(Some(&key), ALICE, "signed");
        let repo = sandbox.repo();

        let wildcard = AllowedSigners::parse(&line_of("*@example.com", &public)).expect("parse");
        let verified = verify_commit(&repo, &commit, &wildcard).expect("wildcard matches");
        assert_eq!(verified.principal, ALICE);

        let quoted = AllowedSigners::parse(&line_of("\"bob@example.com,alice@example.???\"", &public)).expect("parse");
        assert_eq!(
            verify_commit(&repo, &commit, &quoted).expect("matches").principal,
            ALICE
        );

        let negated = AllowedSigners::parse(&line_of("!alice@example.com,*@example.com", &public)).expect("parse");
        let error = verify_commit(&repo, &commit, &negated).unwrap_err();
        assert!(matches!(error, TrustError::PrincipalMismatch { .. }), "{error:?}");
    }

    #[test]
    fn committer_email_not_listed_for_the_key_is_refused() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let commit = sandbox.commit(Some(&key), "bob@example.com", "alice's key, bob's name");
        let allowed = sandbox.allowed(&line_of(ALICE, &sandbox.public_key(&key)));

        let error = verify_commit(&sandbox.repo(), &commit, &allowed).unwrap_err();
        assert!(matches!(error, TrustError::PrincipalMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("is allowed only for alice@example.com, not for committer email bob@example.com"),
            "{message}"
        );
    }

    #[test]
    fn gpg_and_x509_signatures_are_not_supported() {
        let sandbox = Sandbox::new();
        let allowed = AllowedSigners::parse(&line_of(ALICE, FIXED_KEY)).expect("parse");
        let repo = sandbox.repo();

        let pgp = sandbox.commit_with_signature(
            "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQQ=\n=abcd\n-----END PGP SIGNATURE-----\n",
        );
        let error = verify_commit(&repo, &pgp, &allowed).unwrap_err();
        assert!(matches!(error, TrustError::NotSsh { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("OpenPGP"), "{message}");
        assert!(message.contains("only SSH signatures are supported"), "{message}");

        let x509 =
            sandbox.commit_with_signature("-----BEGIN SIGNED MESSAGE-----\nMIAG\n-----END SIGNED MESSAGE-----\n");
        let error = verify_commit(&repo, &x509, &allowed).unwrap_err();
        assert!(error.to_string().contains("X.509"), "{error}");
    }

    #[test]
    fn malformed_ssh_signatures_are_reported() {
        let sandbox = Sandbox::new();
        let allowed = AllowedSigners::parse(&line_of(ALICE, FIXED_KEY)).expect("parse");
        let repo = sandbox.repo();
        for signature in [
            "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n",
            "-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----\n",
        ] {
            let commit = sandbox.commit_with_signature(signature);
            let error = verify_commit(&repo, &commit, &allowed).unwrap_err();
            assert!(
                matches!(error, TrustError::MalformedSignature { .. }),
                "{signature}: {error:?}"
            );
        }
    }

    #[test]
    fn signature_for_another_namespace_is_refused() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let allowed = AllowedSigners::parse(&line_of(ALICE, &sandbox.public_key(&key))).expect("parse");
        let repo = sandbox.repo();

        // The commit's exact content, signed with `ssh-keygen -Y sign -n file` instead of git's namespace.
        let content = sandbox.unsigned_content(&repo);
        let content_path = sandbox.path("content");
        std::fs::write(&content_path, &content).expect("write content");
        let mut command = sandbox.command("ssh-keygen");
        command
            .args(["-q", "-Y", "sign", "-n", "file", "-f"])
            .arg(&key)
            .arg(&content_path);
        sandbox.run(command);
        let signature = std::fs::read_to_string(sandbox.path("content.sig")).expect("signature");
        let commit = repo
            .commit_signed(&content, &signature, None)
            .expect("commit")
            .to_string();

        let error = verify_commit(&repo, &commit, &allowed).unwrap_err();
        assert!(
            matches!(&error, TrustError::SignatureNamespace { namespace, .. } if namespace == "file"),
            "{error:?}"
        );
        assert!(error.to_string().contains("must use namespace \"git\""), "{error}");
    }

    #[test]
    fn commit_ids_must_be_full_and_present() {
        let sandbox = Sandbox::new();
        let key = sandbox.key("alice", &["ed25519"]);
        let commit = sandbox.commit(Some(&key), ALICE, "signed");
        let allowed = AllowedSigners::parse(&line_of(ALICE, &sandbox.public_key(&key))).expect("parse");
        let repo = sandbox.repo();
        for id in [
            &commit[..12],
            "HEAD",
            "",
            "0000000000000000000000000000000000000000",
            "é",
        ] {
            let error = verify_commit(&repo, id, &allowed).unwrap_err();
            assert!(matches!(error, TrustError::ReadCommit { .. }), "{id}: {error:?}");
        }
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

    #[test]
    fn times_follow_ssh_keygen() {
        assert_eq!(parse_time("20240101Z"), Some(1_704_067_200));
        assert_eq!(parse_time("20240101utc"), Some(1_704_067_200));
        assert_eq!(parse_time("202406011200Z"), Some(COMMITTED_AT));
        assert_eq!(parse_time("20240601120001Z"), Some(COMMITTED_AT + 1));
        assert_eq!(parse_time("20240229Z"), Some(1_709_164_800));
        for invalid in [
            "",
            "Z",
            "2024010",
            "20240230Z",
            "20230229",
            "20240101 Z",
            "2024010112Z",
            "2024-1-01",
            "19700101Z",
        ] {
            assert_eq!(parse_time(invalid), None, "{invalid}");
        }
        assert!(parse_time("20240101").is_some(), "local time");
        assert_eq!(format_utc(COMMITTED_AT), "2024-06-01 12:00:00 UTC");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn patterns_follow_openssh() {
        assert!(match_pattern_list("alice@example.com", "*@example.com"));
        assert!(match_pattern_list("alice@example.com", "bob,alice@example.com"));
        assert!(match_pattern_list("alice@example.com", "al?ce@*.com"));
        assert!(
            !match_pattern_list("alice@example.com", "Alice@example.com"),
            "case-sensitive"
        );
        assert!(!match_pattern_list("alice@example.com", "*@example.org"));
        assert!(!match_pattern_list("alice@example.com", "!alice@*,*"));
        assert!(
            !match_pattern_list("alice@example.com", "!bob@*"),
            "a negation alone allows nobody"
        );
        assert!(match_pattern_list("git", "*"));
        assert!(match_pattern("", "*"));
        assert!(!match_pattern("", "?"));
        assert!(match_pattern("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "*a*a*a*a*a*a*a*b"));
        assert!(!match_pattern("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "*a*a*a*a*a*a*a*b"));
    }
}
