//! Field path <-> source position, for problems found after decoding.
//!
//! Semantic validation works on the decoded [`Config`](super::Config), which has no
//! positions. This index re-reads the YAML event stream (cheap: config files are small
//! and already passed the budget) and records where each field's node starts.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser};

use super::error::FieldPath;
use super::source::offset_of;

/// Where one node sits.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Start of the mapping key naming this node, for mapping values.
    key: Option<usize>,
    /// Start of the node itself.
    start: usize,
    /// Whether the node is a scalar (or alias) rather than a collection.
    scalar: bool,
}

/// A scalar's extent, for finding the field a text position belongs to.
#[derive(Debug, Clone)]
struct Extent {
    start: usize,
    end: usize,
    path: FieldPath,
}

/// What the walk expects next inside an open collection.
enum Frame {
    Map {
        path: FieldPath,
        /// The key read and waiting for its value, with its start.
        key: Option<(String, usize)>,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
}

/// Positions of the nodes of one YAML document, by field path.
#[derive(Debug, Default)]
pub(crate) struct NodeIndex {
    nodes: HashMap<FieldPath, Node>,
    scalars: Vec<Extent>,
}

impl NodeIndex {
    /// Indexes `text`; a document that does not parse yields what was read before the error.
    pub(crate) fn build(text: &str) -> Self {
        let mut index = NodeIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let start = marker_offset(text, span.start);
            let end = marker_offset(text, span.end).max(start);
            match event {
                Event::Scalar(value, ..) => {
                    index.node(&mut stack, start, end, true, Some(value.as_ref()));
                }
                Event::Alias(..) => {
                    index.node(&mut stack, start, end, true, None);
                }
                Event::MappingStart(..) => {
                    let path = index.node(&mut stack, start, end, false, None);
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = index.node(&mut stack, start, end, false, None);
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index
    }

    /// Records a node starting at `start`; returns its path.
    fn node(
        &mut self,
        stack: &mut [Frame],
        start: usize,
        end: usize,
        scalar: bool,
        text: Option<&str>,
    ) -> FieldPath {
        let (path, key) = match stack.last_mut() {
            None => (FieldPath::root(), None),
            Some(Frame::Seq { path, next }) => {
                *next += 1;
                (path.index(*next - 1), None)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some((name, key_start)) => (path.key(name), Some(key_start)),
                None => {
                    // This node is a key. Complex keys get a name nobody looks up.
                    let name = text.unwrap_or("?").to_string();
                    if scalar {
                        self.scalars.push(Extent {
                            start,
                            end,
                            path: path.key(name.as_str()),
                        });
                    }
                    *key = Some((name, start));
                    return path.key("?");
                }
            },
        };
        if scalar {
            self.scalars.push(Extent {
                start,
                end,
                path: path.clone(),
            });
        }
        self.nodes.insert(path.clone(), Node { key, start, scalar });
        path
    }

    /// Where to point for a problem with `path`: a scalar value itself, a collection by
    /// its key. A path not written in the file (a defaulted field) falls back to its
    /// nearest written ancestor.
    pub(crate) fn offset(&self, path: &FieldPath) -> Option<usize> {
        let mut path = path.clone();
        loop {
            if let Some(node) = self.nodes.get(&path) {
                return Some(match (node.scalar, node.key) {
                    (false, Some(key)) => key,
                    _ => node.start,
                });
            }
            if path.is_root() {
                return None;
            }
            path = path.parent();
        }
    }

    /// The key's own position for a mapping entry (falls back like [`Self::offset`]).
    pub(crate) fn key_offset(&self, path: &FieldPath) -> Option<usize> {
        match self.nodes.get(path) {
            Some(Node { key: Some(key), .. }) => Some(*key),
            _ => self.offset(path),
        }
    }

    /// The path of the innermost scalar covering `offset`.
    pub(crate) fn path_at(&self, offset: usize) -> Option<FieldPath> {
        self.scalars
            .iter()
            .filter(|extent| extent.start <= offset && offset < extent.end.max(extent.start + 1))
            .min_by_key(|extent| extent.end - extent.start)
            .map(|extent| extent.path.clone())
    }
}

/// A parser marker as a byte offset (markers carry a 1-based line, 0-based column).
fn marker_offset(text: &str, marker: Marker) -> usize {
    marker
        .byte_offset()
        .or_else(|| offset_of(text, marker.line(), marker.col() + 1))
        .unwrap_or(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
services:
  orders:
    hosts: [a, b]
    endpoints:
      - 10.0.0.1:80
      - \"10.0.0.2:80\"
limits: {max_connections: 5}
";

    fn path(parts: &[&str]) -> FieldPath {
        parts
            .iter()
            .fold(FieldPath::root(), |path, part| match part.parse() {
                Ok(index) => path.index(index),
                Err(_) => path.key(*part),
            })
    }

    #[test]
    fn scalars_are_found_at_their_value() {
        let index = NodeIndex::build(TEXT);
        let at = |p: &[&str]| index.offset(&path(p)).map(|o| &TEXT[o..]);
        let starts = |p: &[&str], expected: &str| {
            let found = at(p).expect("indexed");
            assert!(found.starts_with(expected), "{p:?} at {found:?}");
        };
        starts(&["services", "orders", "endpoints", "1"], "\"10.0.0.2:80\"");
        starts(&["services", "orders", "endpoints", "0"], "10.0.0.1:80");
        starts(&["services", "orders", "hosts", "1"], "b]");
        starts(&["limits", "max_connections"], "5}");
    }

    #[test]
    fn collections_are_found_at_their_key() {
        let index = NodeIndex::build(TEXT);
        let offset = index
            .offset(&path(&["services", "orders"]))
            .expect("present");
        assert!(TEXT[offset..].starts_with("orders:"));
    }

    #[test]
    fn absent_fields_fall_back_to_the_nearest_ancestor() {
        let index = NodeIndex::build(TEXT);
        let offset = index
            .offset(&path(&["services", "orders", "protocol"]))
            .expect("ancestor present");
        assert!(TEXT[offset..].starts_with("orders:"));
        assert_eq!(
            index.offset(&path(&["nothing", "here"])),
            Some(0),
            "the root"
        );
        assert_eq!(NodeIndex::build("").offset(&path(&["x"])), None);
    }

    #[test]
    fn path_at_finds_the_enclosing_scalar() {
        let index = NodeIndex::build(TEXT);
        let offset = TEXT.find("10.0.0.1").expect("present") + 3;
        assert_eq!(
            index.path_at(offset).map(|p| p.to_string()),
            Some("services.orders.endpoints[0]".to_string())
        );
        let offset = TEXT.find("hosts").expect("present") + 1;
        assert_eq!(
            index.path_at(offset).map(|p| p.to_string()),
            Some("services.orders.hosts".to_string())
        );
    }
}
