//! A commit's armored signature: which kind it is (SSH, OpenPGP, X.509) and, for SSH, decoding it.

use ssh_key::SshSig;

const SSH_SIGNATURE_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const SSH_SIGNATURE_END: &str = "-----END SSH SIGNATURE-----";
/// The line width the PEM decoder of ssh-key insists on (what ssh-keygen writes).
const PEM_LINE_WIDTH: usize = 70;

/// The kind of a signature git knows but that is not SSH (git's own detection by armor line).
pub(super) fn foreign_signature_kind(signature: &str) -> Option<&'static str> {
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
pub(super) fn decode_ssh_signature(armored: &str) -> Result<SshSig, String> {
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
