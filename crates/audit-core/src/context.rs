//! Validation of the acting context set by applications.

/// How an action was triggered.
pub const SOURCES: [&str; 7] = ["UI", "API", "AUTOMATION", "IMPORT", "SYSTEM", "AI", "SQL"];

/// Source used when no context names one.
pub const DEFAULT_SOURCE: &str = "SQL";

/// Normalizes a source (case-insensitive) or explains which values are allowed.
pub fn normalize_source(source: &str) -> Result<&'static str, String> {
    let trimmed = source.trim();
    SOURCES
        .iter()
        .copied()
        .find(|s| s.eq_ignore_ascii_case(trimmed))
        .ok_or_else(|| format!("invalid audit source {source:?}"))
}

/// The hint that lists the accepted sources.
pub fn source_hint() -> String {
    format!("Use one of {} (case-insensitive).", SOURCES.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_case_insensitive() {
        assert_eq!(normalize_source("ui").unwrap(), "UI");
        assert_eq!(normalize_source(" Automation ").unwrap(), "AUTOMATION");
        assert_eq!(normalize_source("ai").unwrap(), "AI");
    }

    #[test]
    fn unknown_sources_are_refused() {
        assert!(normalize_source("web").is_err());
        assert!(normalize_source("").is_err());
        assert!(source_hint().contains("AUTOMATION"));
    }
}
