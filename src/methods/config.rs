//! The method section of a run's settings: which methods, and the settings of those that
//! have their own. The methods with settings are listed once below; from that list come
//! the flags `peft train` takes ([`MethodFlags`], flattened into the run's overrides) and
//! the method section of `config.json` ([`MethodConfig`]).

use anyhow::Result;

use super::{MethodSpec, Methods};
use crate::model::family::{Family, Projections};

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
                // Prefix tuning shares prompt tuning's settings, not all of them.
                if let (Some(p), true) = (&self.prompt, self.name.has(super::prefix::METHOD)) {
                    super::prefix::check_shared(p.init_text.as_deref())?;
                }
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
    adalora: adalora,
    ina: ina,
    ia3: ia3,
    loreft: loreft,
    bottleneck: bottleneck,
    hra: hra,
    vera: vera,
    prompt: prompt,
    prefix: prefix,
);

impl MethodConfig {
    /// Adapter targets as the model's family takes them. The methods' default targets name
    /// projections that DeBERTa v1 fuses into one `in_proj`; on such a family a default
    /// becomes PEFT's default for it (`in_proj` for LoRA, DoRA and InA, `in_proj` and
    /// `output.dense` for IA3), as PEFT picks when no targets are given. Targets a user
    /// named are kept as named, and refused when the model is built if they name nothing.
    pub fn fit_to(&mut self, family: &Family) {
        use super::{hra, ia3, ina, lora};
        if family.projections != Projections::Fused {
            return;
        }
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let lora_default = lora::Flags::default()
            .resolve(&Methods::one(lora::METHOD))
            .map(|s| s.targets);
        if let Some(s) = &mut self.lora {
            if lora_default.as_ref().is_ok_and(|d| *d == s.targets) {
                s.targets = names(family.peft_lora_targets);
            }
        }
        let ina_default = ina::Flags::default()
            .resolve(&Methods::one(ina::METHOD))
            .map(|s| s.targets);
        if let Some(s) = &mut self.ina {
            if ina_default.as_ref().is_ok_and(|d| *d == s.targets) {
                s.targets = names(family.peft_lora_targets);
            }
        }
        // HRA's defaults are LoRA's in PEFT (TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING).
        let hra_default = hra::Flags::default()
            .resolve(&Methods::one(hra::METHOD))
            .map(|s| s.targets);
        if let Some(s) = &mut self.hra {
            if hra_default.as_ref().is_ok_and(|d| *d == s.targets) {
                s.targets = names(family.peft_lora_targets);
            }
        }
        let ia3_default = ia3::Flags::default()
            .resolve(&Methods::one(ia3::METHOD))
            .map(|s| s.targets);
        if let Some(s) = &mut self.ia3 {
            if ia3_default.as_ref().is_ok_and(|d| *d == s.targets) {
                s.targets = names(family.peft_ia3_targets);
            }
        }
    }

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
    /// Our default targets, in each family's module names and fitted to it, are PEFT's
    /// defaults for it; a target a user names on DeBERTa v1 is kept as named.
    #[test]
    fn default_targets_are_peft_defaults_for_every_family() {
        use crate::methods::{ia3, ina, lora, MethodFlags, Methods};
        use crate::model::family::{Family, FAMILIES};
        for f in &FAMILIES {
            assert_eq!(Family::of_model_type(f.model_type).unwrap().arch, f.arch);
            assert_eq!(f.arch.family().model_type, f.model_type);
            let fitted = |method: Methods| {
                let mut c = MethodFlags::default().resolve(method).unwrap();
                c.fit_to(f);
                c
            };
            let (l, i, a) = (
                fitted(lora::METHOD.into()).lora.unwrap(),
                fitted(ina::METHOD.into()).ina.unwrap(),
                fitted(ia3::METHOD.into()).ia3.unwrap(),
            );
            // InA is no PEFT method: its default (query, key, value, the authors') stays
            // where it names modules, and becomes LoRA's PEFT default on DeBERTa v1.
            let fused = f.projections == crate::model::family::Projections::Fused;
            let ina_peft = if fused { f.peft_lora_targets } else { &[] };
            for (ours, peft) in [
                (&l.targets, f.peft_lora_targets),
                (&i.targets, ina_peft),
                (&a.targets, f.peft_ia3_targets),
            ] {
                if peft.is_empty() {
                    continue;
                }
                let modules: Vec<String> =
                    ours.iter().map(|t| f.adapter_module(t).unwrap()).collect();
                // PEFT matches a target as a suffix of the module's path.
                for (module, p) in modules.iter().zip(peft) {
                    assert!(
                        module.ends_with(p),
                        "{}: {module} vs PEFT's {p}",
                        f.model_type
                    );
                }
                assert_eq!(modules.len(), peft.len(), "{}", f.model_type);
            }
        }
        let v1 = crate::model::Arch::Deberta.family();
        let mut named = MethodFlags {
            lora: lora::Flags {
                lora_targets: Some(vec!["output.dense".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
        .resolve(lora::METHOD.into())
        .unwrap();
        named.fit_to(v1);
        assert_eq!(named.lora.unwrap().targets, ["output.dense"]);
        assert!(v1.adapter_module("query").unwrap_err().contains("in_proj"));
        let bert = crate::model::Arch::Bert.family();
        assert!(bert.adapter_module("in_proj").is_err());
    }
}
