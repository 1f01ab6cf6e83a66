//! Every e2e test in one binary: twenty binaries each linking kube, k8s-openapi and tokio cost
//! 15 minutes of a CI run to build; one costs a fraction of that. Each file stays a module of its
//! own (`cargo test -p ouroboros-e2e --test e2e -- durability::` runs one), and libtest orders
//! the tests by their full names, so files still run in alphabetical order.

mod api_validation;
mod backup;
mod backup_faults;
mod backup_schedule;
mod certificates;
mod cluster_smoke;
mod continuous;
mod drill;
mod durability;
mod encryption;
mod failpoints;
mod lifecycle;
mod maintenance;
mod multinode;
mod operator_deployment;
mod point_in_time;
mod restore;
mod self_hosted;
mod self_hosted_nodes;
mod self_hosted_tls;
mod sidecar_auth;
mod tls;
