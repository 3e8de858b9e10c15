//! Byte sizes as people write them ("512M", "2G", "2 GiB") and read them.

use crate::SandboxError;

/// Parse a size such as `1048576`, `512k`, `512M`, `2G`, `2GiB` or `1.5g`
/// (binary units: k = 1024).
pub fn parse_bytes(text: &str) -> Result<u64, SandboxError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let invalid = || {
        SandboxError::InvalidPolicy(format!(
            "size {text:?} is not understood; write a number with an optional unit, e.g. 512M or 2G"
        ))
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Format a size for people: `2 GiB`, `512 MiB`, `1.5 GiB`, `100 bytes`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if bytes.is_multiple_of(size) {
                format!("{} {name}", bytes / size)
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
    }

    #[test]
    fn bad_sizes_name_the_input() {
        let err = parse_bytes("lots").unwrap_err().to_string();
        assert!(err.contains("\"lots\""), "{err}");
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("5X").is_err());
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_bytes(2 << 30), "2 GiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(100), "100 bytes");
    }
}
