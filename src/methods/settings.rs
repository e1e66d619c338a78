//! A method's own settings, declared once in its file with [`method_settings!`]: each row
//! is a flag, a TOML key and a field of the typed struct a run saves, with its help and its
//! default. `config.rs` lists the methods that have settings and builds from them the flags
//! `peft train` takes and the method section of a run's `config.json`.

use super::{Method, Methods};

/// How a default shows in `--help`.
pub trait Shown {
    fn shown(&self) -> String;
}

macro_rules! shown_by_display {
    ($($t:ty),*) => { $(impl Shown for $t { fn shown(&self) -> String { self.to_string() } })* };
}
shown_by_display!(usize, u64, f64, bool, String, Method, Methods);

impl Shown for Vec<String> {
    fn shown(&self) -> String {
        self.join(",")
    }
}

/// Implements [`Shown`] for clap value enums by the name the flag takes.
#[macro_export]
macro_rules! shown_by_value_enum {
    ($($t:ty),*) => { $(impl $crate::methods::settings::Shown for $t {
        fn shown(&self) -> String {
            clap::ValueEnum::to_possible_value(self)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        }
    })* };
}

/// Whether a saved setting is left out of `config.json`: an unset optional one.
pub trait Absent {
    fn absent(&self) -> bool {
        false
    }
}

impl<T> Absent for Option<T> {
    fn absent(&self) -> bool {
        self.is_none()
    }
}

impl Absent for usize {}
impl Absent for u64 {}
impl Absent for f64 {}
impl Absent for bool {}
impl Absent for String {}
impl Absent for Vec<String> {}
impl Absent for std::path::PathBuf {}

pub fn absent<T: Absent>(v: &T) -> bool {
    v.absent()
}

/// A field's help: its doc comment, with its default when it has a fixed one.
pub fn help(doc: &[&str], default: Option<String>) -> String {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    // The method list comes from the registry, so a new method shows without an edit here.
    let text = text.replace("{methods}", &Method::names());
    match default {
        Some(d) => format!("{} [default: {d}]", text.trim_end_matches('.')),
        None => text,
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A method's settings, one row per setting:
///
/// ```text
/// /// lora, dora: adapter rank.         <- its help
/// lora_r => r: usize = default(8);     <- flag/TOML key => field: type = rule
/// ```
///
/// makes `Flags` (every key optional: the flags, flattened into `peft train`'s, and the
/// TOML keys), `Settings` (the typed, resolved values a run saves under its method) and the
/// two ways between them. A rule is `default(E)` (E when not given), `optional()` (may be
/// left unset), `required(EXAMPLE)` (refused when missing, the example in the message) or
/// `computed(E)`: E, an `Option`, works the value out from `f` (the flags)
/// and `m` (the run's methods), as `context(m, f)` names them, with `#[shown(D)]` giving
/// `--help` its default. `used_by` says which runs take the settings; given to any other
/// run, they are refused.
#[macro_export]
macro_rules! method_settings {
    (
        context($m:ident, $f:ident);
        used_by = $used:expr;
        $(
            $(#[doc = $doc:literal])*
            $(#[shown($shown:expr)])?
            $(#[arg($($arg:tt)*)])*
            $(#[serde($($serde:tt)*)])*
            $key:ident => $name:ident : $ty:ty = $rule:ident ( $($val:tt)* );
        )*
    ) => {
        /// This method's flags and TOML keys, each optional.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
        // Every method's struct is `Flags`: no argument group by that name.
        #[group(skip)]
        pub struct Flags {
            $(
                #[arg(long)]
                $(#[arg($($arg)*)])*
                #[arg(help = $crate::methods::settings::help(
                    &[$($doc),*],
                    $crate::method_settings!(@either
                        ($(Some($crate::methods::settings::Shown::shown(&$shown)))?)
                        ($crate::method_settings!(@shown $rule $ty, ($($val)*))))
                ))]
                $(#[serde($($serde)*)])*
                pub $key: Option<$ty>,
            )*
        }

        /// This method's settings, resolved: saved in the method section of `config.json`.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                #[serde(skip_serializing_if = "crate::methods::settings::absent")]
                pub $name: $crate::method_settings!(@type $rule $ty),
            )*
        }

        impl Flags {
            /// Whether a run of these methods takes these settings.
            pub fn used_by($m: &$crate::methods::Methods) -> bool {
                $used
            }

            /// The first key given, if any.
            pub fn given(&self) -> Option<&'static str> {
                $( if self.$key.is_some() { return Some(stringify!($key)); } )*
                None
            }

            /// Keys set here win over `base`.
            pub fn or(self, base: Self) -> Self {
                Self { $($key: self.$key.or(base.$key)),* }
            }

            /// Each required setting at its example value, the others unset.
            pub fn examples() -> Self {
                Self {
                    $( $key: $crate::method_settings!(@example $rule ($($val)*)), )*
                }
            }

            /// Every key, for messages.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// Every setting by its rule.
            #[allow(unused_variables)]
            pub fn resolve(self, $m: &$crate::methods::Methods) -> anyhow::Result<Settings> {
                let $f = self;
                Ok(Settings {
                    $( $name: $crate::method_settings!(@value $f $m $key $rule ($($val)*)), )*
                })
            }
        }

        impl Settings {
            /// The flags that resolve to these settings.
            pub fn flags(&self) -> Flags {
                Flags { $( $key: $crate::method_settings!(@back self $name $rule), )* }
            }
        }
    };
    (@either ($e:expr) ($f:expr)) => { $e };
    (@either () ($f:expr)) => { $f };
    (@type default $ty:ty) => { $ty };
    (@type required $ty:ty) => { $ty };
    (@type $rule:ident $ty:ty) => { Option<$ty> };
    (@shown default $ty:ty, ($e:expr)) => {
        Some(<$ty as $crate::methods::settings::Shown>::shown(&$e))
    };
    (@shown $rule:ident $ty:ty, ($($t:tt)*)) => { None };
    (@value $f:ident $m:ident $key:ident default ($e:expr)) => {
        $f.$key.clone().unwrap_or_else(|| $e)
    };
    (@value $f:ident $m:ident $key:ident required ($example:expr)) => {
        match $f.$key.clone() {
            Some(v) => v,
            None => {
                let flag = stringify!($key).replace('_', "-");
                return Err($crate::error::user(format!(
                    "--method {} needs --{flag} (e.g. --{flag} {})", $m, $example
                )));
            }
        }
    };
    (@value $f:ident $m:ident $key:ident optional ()) => { $f.$key.clone() };
    (@value $f:ident $m:ident $key:ident computed ($e:expr)) => { $e };
    (@example required ($example:expr)) => { $example.parse().ok() };
    (@example $rule:ident ($($t:tt)*)) => { None };
    (@back $s:ident $name:ident default) => { Some($s.$name.clone()) };
    (@back $s:ident $name:ident required) => { Some($s.$name.clone()) };
    (@back $s:ident $name:ident $rule:ident) => { $s.$name.clone() };
}
