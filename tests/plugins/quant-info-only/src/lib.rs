//! `quant-info-only`: a component that exports `info` but not `score-batch`,
//! so the tests can check the host names the missing export.

wit_bindgen::generate!({
    inline: r#"
        package riskhost:model@1.0.0;

        interface types {
            record param-spec {
                name: string,
                description: string,
                default-value: f64,
                min: f64,
                max: f64,
                integer: bool,
            }
            record data-needs {
                lookback-days: u32,
                lookback-param: option<string>,
            }
            record model-info {
                name: string,
                version: string,
                description: string,
                params: list<param-spec>,
                data: data-needs,
            }
        }

        world model {
            use types.{model-info};
            export info: func() -> model-info;
        }
    "#,
});

struct InfoOnly;

impl Guest for InfoOnly {
    fn info() -> riskhost::model::types::ModelInfo {
        riskhost::model::types::ModelInfo {
            name: "quant-info-only".into(),
            version: "1.0.0".into(),
            description: "Exports info but not score-batch (tests only).".into(),
            params: vec![],
            data: riskhost::model::types::DataNeeds {
                lookback_days: 1,
                lookback_param: None,
            },
        }
    }
}

export!(InfoOnly);
