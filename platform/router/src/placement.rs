//! Which cell each instance was placed on, so the router can ignore a route registration from
//! a cell for an instance that cell does not run.
//!
//! Flow: the router learns placements from the slim [`InstancePlaced`] messages on
//! `executor.placed.<cell>` (on the authenticated bus only the cloud controller and the health
//! manager may publish those, and the router may not read start commands, which carry app
//! environments and droplet tokens), and who sent a registration from its subject,
//! `router.register.<cell>` (each cell's NATS user may publish only its own). A registration
//! from cell B for an instance placed on cell A is refused and counted
//! (`router.dropped{reason=not_placed}`). The map and its rules are the bus crate's
//! [`Placements`], shared with the health manager and the cloud controller.
//!
//! An instance whose placement the router never saw (the router started after it) is pinned to
//! the first cell that registers it, and a placement seen later overrides the pin. The plain
//! gorouter subjects (`router.register`) carry no cell and are not checked; on the
//! authenticated bus nobody may publish them.
//!
//! [`InstancePlaced`]: hydrant_bus::messages::InstancePlaced

use hydrant_bus::messages::{self, EXECUTOR_PLACED};
pub(crate) use hydrant_bus::placement::{Claim, Placements};

/// The subscription that watches every cell's placements.
pub(crate) fn subject() -> String {
    messages::every_cell(EXECUTOR_PLACED)
}
