//! Wall-clock time as the CRI reports it.

/// Now, in nanoseconds since the Unix epoch (0 on a clock before it; saturating).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
