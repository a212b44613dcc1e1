//! Test helpers shared by the workspace: in-memory and fault-injecting storage, tree comparison.
