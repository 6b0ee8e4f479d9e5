//! What passes from one generation to the next: the service's generation and the application's
//! versioned state, in one handover state frame.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Error;

/// The application's state that a successor continues from: counters, caches, session tables.
///
/// The version says which encoding a value has (postcard of `Self`); bump it whenever the type
/// changes in a way an older or newer program would misread. A successor refuses a state whose
/// version it does not know — it exits before it is ready, and the old process serves on — unless
/// [`from_version`](ServiceState::from_version) converts it.
///
/// `()` is the state of a service that carries none.
///
/// ```
/// use lifeline::service::ServiceState;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Counters { served: u64 }
///
/// impl ServiceState for Counters {
///     const VERSION: u32 = 1;
/// }
/// ```
pub trait ServiceState: Serialize + DeserializeOwned + Send + 'static {
    /// The version of this type's encoding.
    const VERSION: u32;

    /// Reads a state of another `version` (written by an older or newer program), or `None` to
    /// refuse it ([`Error::StateVersion`]). The default refuses every other version.
    fn from_version(version: u32, payload: &[u8]) -> Option<Self> {
        let _ = (version, payload);
        None
    }
}

impl ServiceState for () {
    const VERSION: u32 = 0;
}

/// The version of the service layer's own frame (inside handover's `LLst` frame).
pub(crate) const FRAME_VERSION: u32 = 1;

/// The frame: the service's own counters around the application's encoded state.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Carried {
    /// The sender's generation; the receiver's is one more.
    pub(crate) generation: u64,
    /// [`ServiceState::VERSION`] of the sender's state type.
    pub(crate) app_version: u32,
    /// The sender's state, postcard-encoded.
    pub(crate) app: Vec<u8>,
    /// Earlier generations that may still be draining, the sender included.
    pub(crate) retired: Vec<super::retired::Retired>,
}

impl Carried {
    pub(crate) fn encode<S: ServiceState>(
        generation: u64,
        state: &S,
        retired: Vec<super::retired::Retired>,
    ) -> Result<Carried, postcard::Error> {
        Ok(Carried { generation, app_version: S::VERSION, app: postcard::to_stdvec(state)?, retired })
    }

    /// The application's state as `S`, converted by [`ServiceState::from_version`] when the
    /// versions differ.
    pub(crate) fn decode<S: ServiceState>(&self) -> Result<S, Error> {
        if self.app_version == S::VERSION {
            return postcard::from_bytes(&self.app).map_err(|source| Error::StateDecode { source });
        }
        S::from_version(self.app_version, &self.app)
            .ok_or(Error::StateVersion { found: self.app_version, expected: S::VERSION })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        served: u64,
        name: String,
    }

    impl ServiceState for V2 {
        const VERSION: u32 = 2;
        fn from_version(version: u32, payload: &[u8]) -> Option<Self> {
            (version == 1)
                .then(|| postcard::from_bytes::<u64>(payload).ok())
                .flatten()
                .map(|served| V2 { served, name: "migrated".into() })
        }
    }

    #[test]
    fn a_state_round_trips_with_the_generation() {
        let state = V2 { served: 7, name: "x".into() };
        let carried = Carried::encode(3, &state, Vec::new()).unwrap();
        let bytes = postcard::to_stdvec(&carried).unwrap();
        let back: Carried = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.decode::<V2>().unwrap(), state);
    }

    #[test]
    fn an_older_version_is_converted_or_refused() {
        let v1 = Carried {
            generation: 1,
            app_version: 1,
            app: postcard::to_stdvec(&41u64).unwrap(),
            retired: vec![],
        };
        assert_eq!(v1.decode::<V2>().unwrap(), V2 { served: 41, name: "migrated".into() });
        let v9 = Carried { generation: 1, app_version: 9, app: Vec::new(), retired: vec![] };
        let err = v9.decode::<V2>().unwrap_err();
        assert!(matches!(err, Error::StateVersion { found: 9, expected: 2 }), "{err:?}");
        assert!(matches!(v9.decode::<()>(), Err(Error::StateVersion { found: 9, expected: 0 })));
    }

    proptest! {
        /// A hostile predecessor's payload decodes to a value or a typed error, never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(version in 0u32..4, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let carried = Carried { generation: 0, app_version: version, app: payload, retired: vec![] };
            let _ = carried.decode::<V2>();
            let _ = carried.decode::<()>();
        }

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(carried) = postcard::from_bytes::<Carried>(&bytes) {
                let _ = carried.decode::<V2>();
            }
        }
    }
}
