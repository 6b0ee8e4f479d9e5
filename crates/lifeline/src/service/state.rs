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

/// The version of the service layer's own frame (inside handover's `LLst` frame) that this
/// build writes: 2 (with the service's metric totals) when built with the `metrics` feature,
/// else 1 — so that, without metrics, a program of an earlier release can still take over.
/// Both are read.
pub(crate) const FRAME_VERSION: u32 = if cfg!(feature = "metrics") { 2 } else { 1 };

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
    /// Metric totals that continue across generations, by series (`name{label="value"}`); a
    /// series the receiver does not know is ignored, one it does not find starts at 0. Frame
    /// version 2 only: a version 1 frame carries none.
    pub(crate) counters: Vec<(String, u64)>,
}

/// Version 1 of the frame: [`Carried`] without the counters.
#[derive(Serialize, Deserialize)]
struct CarriedV1<A, R> {
    generation: u64,
    app_version: u32,
    app: A,
    retired: R,
}

/// A [`Carried`] as this build writes it: a frame of [`FRAME_VERSION`].
pub(crate) struct Versioned<'a>(&'a Carried);

impl Serialize for Versioned<'_> {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let carried = self.0;
        if FRAME_VERSION == 1 {
            let v1 = CarriedV1 {
                generation: carried.generation,
                app_version: carried.app_version,
                app: carried.app.as_slice(),
                retired: carried.retired.as_slice(),
            };
            return v1.serialize(serializer);
        }
        carried.serialize(serializer)
    }
}

impl Carried {
    pub(crate) fn encode<S: ServiceState>(
        generation: u64,
        state: &S,
        retired: Vec<super::retired::Retired>,
        counters: Vec<(String, u64)>,
    ) -> Result<Carried, postcard::Error> {
        Ok(Carried {
            generation,
            app_version: S::VERSION,
            app: postcard::to_stdvec(state)?,
            retired,
            counters,
        })
    }

    /// Reads a frame of either version (another is refused as
    /// [`StateVersion`](handover::Error::StateVersion)).
    pub(crate) fn from_frame(frame: &handover::StateFrame) -> Result<Carried, handover::Error> {
        if frame.version == 1 {
            let v1: CarriedV1<Vec<u8>, Vec<super::retired::Retired>> = frame.decode(1)?;
            let CarriedV1 { generation, app_version, app, retired } = v1;
            return Ok(Carried { generation, app_version, app, retired, counters: Vec::new() });
        }
        frame.decode(2)
    }

    /// What to write: a frame of [`FRAME_VERSION`].
    pub(crate) fn versioned(&self) -> Versioned<'_> {
        Versioned(self)
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
        let carried = Carried::encode(3, &state, Vec::new(), Vec::new()).unwrap();
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
            counters: vec![],
        };
        assert_eq!(v1.decode::<V2>().unwrap(), V2 { served: 41, name: "migrated".into() });
        let v9 =
            Carried { generation: 1, app_version: 9, app: Vec::new(), retired: vec![], counters: vec![] };
        let err = v9.decode::<V2>().unwrap_err();
        assert!(matches!(err, Error::StateVersion { found: 9, expected: 2 }), "{err:?}");
        assert!(matches!(v9.decode::<()>(), Err(Error::StateVersion { found: 9, expected: 0 })));
    }

    fn frame(version: u32, payload: &impl Serialize) -> handover::StateFrame {
        handover::StateFrame { version, payload: postcard::to_stdvec(payload).unwrap() }
    }

    #[test]
    fn a_version_1_frame_of_an_earlier_release_is_read_with_no_totals() {
        // Exactly what a predecessor of an earlier release sent: the frame without counters.
        #[derive(Serialize)]
        struct Released {
            generation: u64,
            app_version: u32,
            app: Vec<u8>,
            retired: Vec<crate::service::retired::Retired>,
        }
        let old = Released {
            generation: 4,
            app_version: 2,
            app: postcard::to_stdvec(&V2 { served: 9, name: "n".into() }).unwrap(),
            retired: vec![],
        };
        let carried = Carried::from_frame(&frame(1, &old)).unwrap();
        assert_eq!((carried.generation, carried.counters.len()), (4, 0));
        assert_eq!(carried.decode::<V2>().unwrap(), V2 { served: 9, name: "n".into() });
        let totals = crate::service::metrics::Totals::continue_from(&carried.counters, true, None);
        let ok = totals.carried().into_iter().find(|(k, _)| k.contains("outcome=\"ok\"")).unwrap();
        assert_eq!(ok.1, 1, "only this restart");
    }

    #[test]
    fn a_version_2_frame_carries_the_totals_and_the_written_version_is_read_back() {
        let counters = vec![
            ("lifeline_service_restarts_total{outcome=\"ok\"}".to_owned(), 2),
            ("unknown".to_owned(), 7),
        ];
        let carried =
            Carried::encode(2, &V2 { served: 1, name: "x".into() }, vec![], counters.clone()).unwrap();
        let back = Carried::from_frame(&frame(2, &carried)).unwrap();
        assert_eq!(back.counters, counters);
        let written = frame(FRAME_VERSION, &carried.versioned());
        let back = Carried::from_frame(&written).unwrap();
        assert_eq!(back.generation, 2);
        assert_eq!(back.counters.len(), if FRAME_VERSION == 2 { 2 } else { 0 });
        assert!(matches!(
            Carried::from_frame(&frame(3, &carried)),
            Err(handover::Error::StateVersion { found: 3, expected: 2 })
        ));
    }

    proptest! {
        /// A hostile predecessor's payload decodes to a value or a typed error, never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(version in 0u32..4, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let carried = Carried { generation: 0, app_version: version, app: payload, retired: vec![], counters: vec![] };
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
