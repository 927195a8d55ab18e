//! `s3://BUCKET[/PREFIX]`: where in an object store a server keeps files.

use std::fmt;
use std::str::FromStr;

/// A bucket and a prefix in it (no leading or trailing slash; empty for
/// the whole bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Location, String> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| format!("'{s}': a store is named s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's own rules for bucket names: 3-63 of a-z, 0-9, '.', '-'.
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid {
            return Err(format!("'{s}': '{bucket}' is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.chars().any(char::is_control)
            || prefix.split('/').any(|c| c == "." || c == ".." || (c.is_empty() && !prefix.is_empty()))
        {
            return Err(format!("'{s}': the prefix must be plain folder names"));
        }
        Ok(Location { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "s3://{}", self.bucket),
            false => write!(f, "s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_a_bucket_and_a_plain_prefix() {
        let l: Location = "s3://artifacts/ci/".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("artifacts", "ci"));
        assert_eq!(l.to_string(), "s3://artifacts/ci");
        assert_eq!("s3://bkt".parse::<Location>().unwrap().to_string(), "s3://bkt");
        for bad in [
            "artifacts",
            "s3://",
            "s3://AB",
            "s3://a_b/x",
            "s3://bkt/../x",
            "s3://bkt/a//b",
            "file:///x",
            "s3://bkt/a\nb",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
