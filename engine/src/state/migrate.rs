//! Schema migrations: one plain function per version step.
//!
//! `STEPS[i]` migrates a db from version `i` to `i + 1`; version 0 is an empty, new file.
//! Each step runs inside the same write transaction that records the new version, so a
//! crash mid-migration leaves the old version intact.

use redb::WriteTransaction;

use super::StateError;
use super::schema::{CONTAINERS, IMAGES, META, NODE, PODS, SNAPSHOTS, TAGS};

type Step = fn(&WriteTransaction) -> Result<(), StateError>;

/// Migration steps, indexed by the version they start from.
pub(super) const STEPS: &[Step] = &[v0_to_v1, v1_to_v2, v2_to_v3];

/// Version 1: the meta and node tables.
fn v0_to_v1(txn: &WriteTransaction) -> Result<(), StateError> {
    txn.open_table(META).map_err(StateError::db)?;
    txn.open_table(NODE).map_err(StateError::db)?;
    Ok(())
}

/// Version 2: image records, tags and snapshot records.
fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StateError> {
    txn.open_table(IMAGES).map_err(StateError::db)?;
    txn.open_table(TAGS).map_err(StateError::db)?;
    txn.open_table(SNAPSHOTS).map_err(StateError::db)?;
    Ok(())
}

/// Version 3: pod and container records.
fn v2_to_v3(txn: &WriteTransaction) -> Result<(), StateError> {
    txn.open_table(PODS).map_err(StateError::db)?;
    txn.open_table(CONTAINERS).map_err(StateError::db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::schema::SCHEMA_VERSION;
    use super::*;

    #[test]
    fn there_is_one_step_per_version() {
        assert_eq!(STEPS.len() as u32, SCHEMA_VERSION);
    }
}
