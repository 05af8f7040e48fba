//! What a client sent with an event: its name and its first argument, read without guessing.
//!
//! socketioxide decodes an event's arguments into the handler's type; a type that
//! deserializes as a tuple receives every argument after the event name. [`FirstArgument`]
//! is such a type: it takes the first argument if there is one and ignores the rest, so "no
//! argument" (the seed's "everything" subscription) is told apart from "an argument that
//! cannot be decoded" (refused as `invalid_payload`) structurally, not by the decoder's
//! error text.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

use crate::protocol::{ClientError, Code};

/// An event's name and first argument, as the client sent them.
#[derive(Debug)]
pub struct Arguments {
    /// The event's name (a handler of several events, like the unknown-event fallback,
    /// needs it).
    pub event: String,
    /// `Ok(None)`: no argument; `Err`: why the arguments could not be decoded.
    first: Result<Option<Value>, String>,
}

impl Arguments {
    pub fn new(event: String, decoded: Result<FirstArgument, String>) -> Arguments {
        Arguments {
            event,
            first: decoded.map(|f| f.0),
        }
    }

    /// An event sent without arguments.
    #[cfg(test)]
    pub fn none(event: &str) -> Arguments {
        Arguments {
            event: event.to_owned(),
            first: Ok(None),
        }
    }

    /// An event sent with `value` as its first argument.
    #[cfg(test)]
    pub fn with(event: &str, value: Value) -> Arguments {
        Arguments {
            event: event.to_owned(),
            first: Ok(Some(value)),
        }
    }

    /// An event whose arguments could not be decoded, for `why`.
    #[cfg(test)]
    pub fn undecodable(event: &str, why: &str) -> Arguments {
        Arguments {
            event: event.to_owned(),
            first: Err(why.to_owned()),
        }
    }

    /// The first argument, if any; undecodable arguments are refused (`invalid_payload`).
    pub fn first(self) -> Result<Option<Value>, ClientError> {
        self.first.map_err(|why| {
            ClientError::new(
                Code::InvalidPayload,
                format!(
                    "the payload of `{}` could not be decoded: {why}",
                    self.event
                ),
            )
        })
    }
}

/// The first argument of an event, if any (the rest are ignored).
#[derive(Debug, PartialEq)]
pub struct FirstArgument(pub Option<Value>);

impl<'de> Deserialize<'de> for FirstArgument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Args;
        impl<'de> Visitor<'de> for Args {
            type Value = FirstArgument;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the arguments of an event")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstArgument, A::Error> {
                let first = seq.next_element::<Value>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstArgument(first))
            }
        }
        // A tuple struct: socketioxide hands it every argument after the event name.
        deserializer.deserialize_tuple_struct("FirstArgument", 1, Args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketioxide_reads_it_as_every_argument_after_the_name() {
        assert!(socketioxide_core::parser::is_de_tuple::<FirstArgument>());
        let read = |json: &str| serde_json::from_str::<FirstArgument>(json).unwrap();
        assert_eq!(read("[]"), FirstArgument(None));
        assert_eq!(
            read(r#"[{"a":1},2]"#),
            FirstArgument(Some(serde_json::json!({"a":1})))
        );
        assert_eq!(read("[null]"), FirstArgument(Some(Value::Null)));
    }
}
