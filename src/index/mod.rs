//! In-memory indexes of a topic: the order index (replay order) and the offset map
//! (where each offset's record is). Neither parses the file format; recovery and the log
//! feed them numbers.

mod offsets;
mod order;

pub use offsets::OffsetMap;
pub use order::{OrderIndex, OrderKey};
