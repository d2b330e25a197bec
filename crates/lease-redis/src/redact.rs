//! Keeping passwords out of `Debug` output and error messages.

/// `url` with the password (user info after `:`, or a `pass=` query parameter) replaced by `***`.
pub(crate) fn redacted_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(password) = url_password(url) {
        out = out.replacen(&format!(":{password}@"), ":***@", 1);
    }
    if let Some(start) = out.find("pass=") {
        let rest = &out[start + 5..];
        let end = rest.find('&').unwrap_or(rest.len());
        out.replace_range(start + 5..start + 5 + end, "***");
    }
    out
}

/// Removes the password of `url` (if any) from `text`.
pub(crate) fn scrub(text: String, url: &str) -> String {
    let mut text = text;
    if let Some(password) = url_password(url) {
        text = text.replace(password, "***");
    }
    if let Some(start) = url.find("pass=") {
        let rest = &url[start + 5..];
        let password = &rest[..rest.find('&').unwrap_or(rest.len())];
        if !password.is_empty() {
            text = text.replace(password, "***");
        }
    }
    text
}

fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redacted_url("redis://app:s3cret@cache:6379/2"),
            "redis://app:***@cache:6379/2"
        );
        assert_eq!(redacted_url("redis://cache"), "redis://cache");
        assert_eq!(
            redacted_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        let text = scrub("bad url redis://:s3cret@x".into(), "redis://:s3cret@x");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
