//! The action vocabulary and the retention category of every action.

/// Retention categories; every action belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    RecordChanges,
    Login,
    Api,
    Export,
    Config,
    Bulk,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::RecordChanges,
        Category::Login,
        Category::Api,
        Category::Export,
        Category::Config,
        Category::Bulk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::RecordChanges => "record_changes",
            Category::Login => "login",
            Category::Api => "api",
            Category::Export => "export",
            Category::Config => "config",
            Category::Bulk => "bulk",
        }
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Actions written only by the capture triggers and revert; `log_event` refuses them
/// so that application code cannot forge a record change.
pub const CAPTURE_ACTIONS: [&str; 5] = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "REVERT"];

/// Written by the audit worker for a stretch of WAL it could no longer read
/// (see the materializer): kept as a config event.
pub const WAL_GAP: &str = "WAL_GAP";

/// Actions written only by the audit worker.
pub const WORKER_ACTIONS: [&str; 1] = [WAL_GAP];

/// The documented application-event vocabulary with its category.
pub const APPLICATION_ACTIONS: [(&str, Category); 18] = [
    ("LOGIN", Category::Login),
    ("LOGIN_FAILED", Category::Login),
    ("LOGOUT", Category::Login),
    ("PASSWORD_CHANGE", Category::Login),
    ("MFA_ENROLL", Category::Login),
    ("MFA_CHALLENGE", Category::Login),
    ("SESSION_EXPIRED", Category::Login),
    ("LOCKOUT", Category::Login),
    ("IMPERSONATION", Category::Login),
    ("EXPORT", Category::Export),
    ("REPORT_RUN", Category::Export),
    ("VIEW", Category::Export),
    ("API_CALL", Category::Api),
    ("CONFIG_CHANGE", Category::Config),
    ("PERMISSION_CHANGE", Category::Config),
    ("BULK_IMPORT", Category::Bulk),
    ("BULK_DELETE", Category::Bulk),
    ("MERGE", Category::Bulk),
];

/// The category of any action; custom actions count as record changes.
pub fn category_of(action: &str) -> Category {
    if WORKER_ACTIONS.contains(&action) {
        return Category::Config;
    }
    APPLICATION_ACTIONS
        .iter()
        .find(|(name, _)| *name == action)
        .map_or(Category::RecordChanges, |(_, c)| *c)
}

/// Normalizes an application action name (upper case) or explains what is wrong.
pub fn normalize_application_action(action: &str) -> Result<String, String> {
    let upper = action.trim().to_ascii_uppercase();
    if upper.is_empty() || upper.len() > 64 {
        return Err("action must be 1 to 64 characters".into());
    }
    if !upper
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        || !upper.as_bytes()[0].is_ascii_uppercase()
    {
        return Err(format!(
            "action {action:?} must start with a letter and contain only letters, digits and underscores"
        ));
    }
    if CAPTURE_ACTIONS.contains(&upper.as_str()) {
        return Err(format!(
            "action {upper} is written only by the capture triggers"
        ));
    }
    if WORKER_ACTIONS.contains(&upper.as_str()) {
        return Err(format!(
            "action {upper} is written only by the audit worker"
        ));
    }
    Ok(upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_action_has_a_category() {
        assert_eq!(category_of("LOGIN_FAILED"), Category::Login);
        assert_eq!(category_of("EXPORT"), Category::Export);
        assert_eq!(category_of("API_CALL"), Category::Api);
        assert_eq!(category_of("PERMISSION_CHANGE"), Category::Config);
        assert_eq!(category_of("BULK_IMPORT"), Category::Bulk);
        assert_eq!(category_of("UPDATE"), Category::RecordChanges);
        assert_eq!(category_of("DEAL_WON"), Category::RecordChanges);
        assert_eq!(category_of("WAL_GAP"), Category::Config);
    }

    #[test]
    fn category_names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.name()), Some(c));
        }
        assert_eq!(Category::parse(" LOGIN "), Some(Category::Login));
        assert_eq!(Category::parse("logins"), None);
    }

    #[test]
    fn application_actions_are_normalized_and_checked() {
        assert_eq!(
            normalize_application_action(" login_failed ").unwrap(),
            "LOGIN_FAILED"
        );
        assert_eq!(
            normalize_application_action("deal_won2").unwrap(),
            "DEAL_WON2"
        );
        assert!(normalize_application_action("").is_err());
        assert!(normalize_application_action("9LIVES").is_err());
        assert!(normalize_application_action("drop table").is_err());
        assert!(normalize_application_action(&"A".repeat(65)).is_err());
        assert!(normalize_application_action("update")
            .unwrap_err()
            .contains("capture triggers"));
        assert!(normalize_application_action("wal_gap")
            .unwrap_err()
            .contains("audit worker"));
    }
}
