//! The method section of a run's settings: which methods, and the settings of those that
//! have their own. The methods with settings are listed once below; from that list come
//! the flags `peft train` takes ([`MethodFlags`], flattened into the run's overrides) and
//! the method section of `config.json` ([`MethodConfig`]).

use anyhow::Result;

use super::{MethodSpec, Methods};

/// The methods with settings of their own, each by the module that declares them
/// (`method_settings!`): `group: module`. A method whose settings another shares (DoRA
/// takes LoRA's, Child-Tuning D F's reserve) is listed once, by its owner.
macro_rules! groups {
    ($($group:ident: $module:ident),* $(,)?) => {
        /// Every method's flags, flattened into `peft train`'s.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
        pub struct MethodFlags {
            $(
                #[command(flatten)]
                #[serde(flatten)]
                pub $group: super::$module::Flags,
            )*
        }

        /// A run's method and the settings of those of its parts that have any: the
        /// method section of `config.json`.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct MethodConfig {
            /// What `--method` named: one method or a union.
            pub name: Methods,
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $group: Option<super::$module::Settings>,
            )*
        }

        impl MethodFlags {
            /// Keys set here win over `base`.
            pub fn or(self, base: Self) -> Self {
                Self { $($group: self.$group.or(base.$group)),* }
            }

            /// The example value of each required setting of the methods `name` takes.
            pub fn examples_for(name: &Methods) -> Self {
                Self {
                    $(
                        $group: match super::$module::Flags::used_by(name) {
                            true => super::$module::Flags::examples(),
                            false => Default::default(),
                        },
                    )*
                }
            }

            /// Every method's keys, for messages about unknown ones.
            pub fn keys() -> Vec<&'static str> {
                let mut keys = Vec::new();
                $( keys.extend_from_slice(super::$module::Flags::KEYS); )*
                keys
            }

            /// The settings of the methods of `name`; a key of a method the run does not
            /// use is refused, naming both.
            pub fn resolve(self, name: Methods) -> Result<MethodConfig> {
                $(
                    let $group = if super::$module::Flags::used_by(&name) {
                        Some(self.$group.resolve(&name)?)
                    } else if let Some(key) = self.$group.given() {
                        return Err(crate::error::user(format!(
                            "--{} does not apply to --method {name}",
                            key.replace('_', "-")
                        )));
                    } else {
                        None
                    };
                )*
                let config = MethodConfig { name, $($group),* };
                config.check()?;
                Ok(config)
            }
        }

        impl MethodConfig {
            /// The flags that resolve to this section.
            pub fn flags(&self) -> MethodFlags {
                MethodFlags {
                    $( $group: self.$group.as_ref().map(|s| s.flags()).unwrap_or_default(), )*
                }
            }

            /// Each method's own checks of its values, and that a section read back from a
            /// file holds settings for exactly the methods that use them.
            pub fn check(&self) -> Result<()> {
                $(
                    match (&self.$group, super::$module::Flags::used_by(&self.name)) {
                        (Some(s), true) => s.check()?,
                        (None, false) => {}
                        (Some(_), false) => return Err(crate::error::user(format!(
                            "method.{}: --method {} takes no such settings",
                            stringify!($group), self.name
                        ))),
                        (None, true) => return Err(crate::error::user(format!(
                            "method.{}: missing; --method {} needs its settings",
                            stringify!($group), self.name
                        ))),
                    }
                )*
                Ok(())
            }
        }
    };
}

groups!(
    subset: subset,
    child_tuning: child_f,
    fisher: fisher_layernorm,
    top_layers: top_layers,
    lora: lora,
    ina: ina,
    ia3: ia3,
    loreft: loreft,
);

impl MethodConfig {
    /// The method with the settings its selection reads; `seed` is the run's.
    pub fn spec(&self, seed: u64) -> MethodSpec {
        MethodSpec {
            config: self.clone(),
            seed,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Our default targets, in each family's module names, are PEFT's defaults for it:
    /// where a family's default is a module we cannot wrap (DeBERTa v1's fused `in_proj`)
    /// the target is refused, not replaced by another.
    #[test]
    fn default_targets_are_peft_defaults_for_every_family() {
        use crate::methods::{ia3, lora, Methods};
        use crate::model::family::{Family, Projections, FAMILIES};
        let lora = lora::Flags::default()
            .resolve(&Methods::one(lora::METHOD))
            .unwrap();
        let ia3 = ia3::Flags::default()
            .resolve(&Methods::one(ia3::METHOD))
            .unwrap();
        for f in &FAMILIES {
            assert_eq!(Family::of_model_type(f.model_type).unwrap().arch, f.arch);
            assert_eq!(f.arch.family().model_type, f.model_type);
            for (ours, peft) in [
                (&lora.targets, f.peft_lora_targets),
                (&ia3.targets, f.peft_ia3_targets),
            ] {
                if peft.is_empty() {
                    continue;
                }
                let modules: Result<Vec<String>, String> =
                    ours.iter().map(|t| f.adapter_module(t)).collect();
                match modules {
                    // PEFT matches a target as a suffix of the module's path.
                    Ok(m) => {
                        for (module, p) in m.iter().zip(peft) {
                            assert!(
                                module.ends_with(p),
                                "{}: {module} vs PEFT's {p}",
                                f.model_type
                            );
                        }
                        assert_eq!(m.len(), peft.len(), "{}", f.model_type);
                    }
                    Err(e) => assert!(
                        f.projections == Projections::Fused && peft.contains(&"in_proj"),
                        "{}: {e}",
                        f.model_type
                    ),
                }
            }
        }
    }
}
