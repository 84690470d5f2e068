//! The wire protocol: the `llamabus-wire` crate (`wire/`), which device firmware shares
//! (`no_std` + `alloc`). Re-exported here so the MQTT side names it as one of its own rooms.

pub use llamabus_wire::*;
