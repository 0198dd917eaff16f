//! Version numbers as the agent reports them and packages require them.

/// True when version `have` is older than `need` (dotted numbers; a part
/// that is not a number compares as text).
pub fn older(have: &str, need: &str) -> bool {
    let parts = |v: &str| v.split(['.', '-']).map(str::to_string).collect::<Vec<_>>();
    let (a, b) = (parts(have), parts(need));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).map_or("0", String::as_str), b.get(i).map_or("0", String::as_str));
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord == std::cmp::Ordering::Less;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_by_number_not_by_text() {
        use super::older;
        assert!(older("0.1.0", "0.2"));
        assert!(older("0.9.0", "0.10.0"));
        assert!(!older("0.10.0", "0.9.0"));
        assert!(!older("1.0", "1.0.0"));
        assert!(!older("1.2.3", "1.2"));
        assert!(older("1.2", "1.2.1"));
    }
}
