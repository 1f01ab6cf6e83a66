//! The Ouroboros API, `etcd.ouroboros.dev/v1alpha1`: the custom resources users write and the operator
//! and backup sidecar read. Every field's `///` doc becomes its description in the generated CRD, which
//! is committed under `crds/` and checked for drift by a test.

pub mod backup;
pub mod cluster;
pub mod common;
pub mod crd;
pub mod delta;
pub mod restore;
pub mod retention;
pub mod settings;
pub mod sidecar;
pub mod version;

pub use backup::{BackupPhase, DrillPhase, EtcdBackup, EtcdBackupSpec, EtcdBackupStatus};
pub use cluster::{
    AntiAffinityMode, AutomaticRecovery, BackupPolicy, ClusterPhase, ContinuousBackup, ContinuousStatus,
    EmptyDirStorage, EtcdCluster, EtcdClusterSpec, EtcdClusterStatus, MemberStatus,
    PersistentVolumeClaimStorage, PodPolicy, RecoveryPolicy, RecoverySpec, RetentionPolicy, SelfHostedSpec,
    StorageMedium, StorageSpec, TlsSpec,
};
pub use common::{
    BackupDestination, BackupEncryption, BackupReference, S3Destination, VolumeDestination, condition_types,
};
pub use restore::{
    EtcdRestore, EtcdRestoreSpec, EtcdRestoreStatus, PointTarget, RestorePhase, RestoreSource, RestoredPoint,
};
pub use settings::{
    AutoCompactionMode, CorruptionCheck, DefragmentationPolicy, EtcdSettings, MaintenanceSpec,
    MaintenanceWindow,
};
pub use version::{EtcdVersion, VersionError};

/// The API group of every Ouroboros resource.
pub const API_GROUP: &str = "etcd.ouroboros.dev";
/// The only served and stored version so far.
pub const API_VERSION: &str = "v1alpha1";
