//! Schema migrations: one plain function per version step.
//!
//! `STEPS[i]` migrates a db from version `i` to `i + 1`; version 0 is an empty, new file.
//! Each step runs inside the same write transaction that records the new version, so a
//! crash mid-migration leaves the old version intact.

use redb::{ReadableTable, WriteTransaction};

use super::StateError;
use super::schema::{CONTAINERS, IMAGES, META, NODE, PODS, SNAPSHOTS, TAGS};

type Step = fn(&WriteTransaction) -> Result<(), StateError>;

/// Migration steps, indexed by the version they start from.
pub(super) const STEPS: &[Step] = &[v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4];

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

/// Version 4: records of version 2 (see `records::RECORD_VERSION`): a container's launch
/// spec as the encoded monitor message, the pod's monitor protocol (1 for the pods that
/// exist now: their monitors were started by an older berth), a pod's network in
/// record-owned types. Each record is read (the older form is still understood) and
/// written back in the new one.
fn v3_to_v4(txn: &WriteTransaction) -> Result<(), StateError> {
    use super::records::{ContainerRecord, PodRecord, RECORD_VERSION};
    fn rewrite<T: serde::Serialize + serde::de::DeserializeOwned>(
        txn: &WriteTransaction,
        def: redb::TableDefinition<&str, &[u8]>,
        bump: impl Fn(&mut T),
    ) -> Result<(), StateError> {
        let mut table = txn.open_table(def).map_err(StateError::db)?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(StateError::db)? {
            let (k, v) = row.map_err(StateError::db)?;
            let mut rec: T = super::decode(v.value())?;
            bump(&mut rec);
            rows.push((k.value().to_owned(), super::encode(&rec)?));
        }
        for (k, v) in rows {
            table
                .insert(k.as_str(), v.as_slice())
                .map_err(StateError::db)?;
        }
        Ok(())
    }
    rewrite::<PodRecord>(txn, PODS, |p| p.schema_version = RECORD_VERSION)?;
    rewrite::<ContainerRecord>(txn, CONTAINERS, |c| c.schema_version = RECORD_VERSION)?;
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
