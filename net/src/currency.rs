//! Currencies (ledgers) and conversion between decimal text and integer minor units.
//!
//! Amounts are integers in minor units everywhere (cents for USD); text is only for people. Parsing
//! and formatting use integer arithmetic only (no floats, no rounding): text with more decimals than
//! the currency has is refused, not rounded, and every overflow is an error, never a wrap.

use thiserror::Error;

use crate::types::Ledger;

/// Most decimal places a ledger may have: 10^18 still leaves a u64 room for whole units.
pub const MINOR_UNITS_MAX: u8 = 18;
/// Most ledgers one registry holds.
pub const CURRENCIES_MAX: usize = 1024;
/// Longest ledger name, in bytes (ISO codes are 3; custom assets get a little more room).
pub const CURRENCY_NAME_BYTES_MAX: usize = 16;
/// Longest amount text accepted, in bytes: bounds the work and rejects absurd inputs early.
pub const AMOUNT_TEXT_BYTES_MAX: usize = 64;

/// ISO 4217 currencies built into every registry: (code, numeric code used as ledger, minor units).
pub const ISO_4217: [(&str, Ledger, u8); 11] = [
    ("USD", 840, 2),
    ("EUR", 978, 2),
    ("GBP", 826, 2),
    ("JPY", 392, 0),
    ("CHF", 756, 2),
    ("CAD", 124, 2),
    ("AUD", 36, 2),
    ("CNY", 156, 2),
    ("INR", 356, 2),
    ("BHD", 48, 3),
    ("KWD", 414, 3),
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmountError {
    #[error("empty amount")]
    Empty,
    #[error("amount text longer than {AMOUNT_TEXT_BYTES_MAX} bytes")]
    TooLong,
    #[error("negative amounts are not accepted")]
    Negative,
    #[error("invalid amount syntax (expected digits with an optional '.' and decimals)")]
    InvalidSyntax,
    #[error("{found} decimals where the currency has {allowed}")]
    TooManyDecimals { found: usize, allowed: u8 },
    #[error("amount does not fit in 64 bits of minor units")]
    Overflow,
    #[error("{0} minor units exceed the maximum of {MINOR_UNITS_MAX}")]
    MinorUnitsTooLarge(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CurrencyError {
    #[error("invalid currency name {0:?} (1..={CURRENCY_NAME_BYTES_MAX} ASCII letters, digits or '_')")]
    InvalidName(String),
    #[error("ledger 0 is reserved")]
    LedgerZero,
    #[error("{0} minor units exceed the maximum of {MINOR_UNITS_MAX}")]
    MinorUnitsTooLarge(u8),
    #[error("a currency named {0} is already registered")]
    DuplicateName(String),
    #[error("ledger {0} is already registered")]
    DuplicateLedger(Ledger),
    #[error("registry full ({CURRENCIES_MAX} currencies)")]
    RegistryFull,
    #[error("unknown currency {0:?}")]
    UnknownName(String),
    #[error("unknown ledger {0}")]
    UnknownLedger(Ledger),
    #[error("invalid ledger spec {0:?} (expected NAME:NUMBER:MINOR_UNITS)")]
    InvalidSpec(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    /// Upper-case name: the ISO code (`USD`) or a custom asset's name.
    pub name: String,
    /// The ledger number transfers and accounts carry (ISO numeric code for currencies).
    pub ledger: Ledger,
    /// Decimal places: 2 for USD (1.00 = 100 minor units), 0 for JPY, 3 for KWD.
    pub minor_units: u8,
}

impl Currency {
    pub fn parse_amount(&self, text: &str) -> Result<u64, AmountError> {
        parse_minor_units(text, self.minor_units)
    }

    pub fn format_amount(&self, minor: u64) -> String {
        format_minor_units(minor, self.minor_units)
    }

    /// Balances are signed (external accounts go negative).
    pub fn format_balance(&self, minor: i64) -> String {
        format_signed_minor_units(minor, self.minor_units)
    }
}

/// The ledgers a deployment knows: ISO 4217 ones built in, custom ones added from configuration.
#[derive(Debug, Clone)]
pub struct CurrencyRegistry {
    currencies: Vec<Currency>,
}

impl Default for CurrencyRegistry {
    fn default() -> Self {
        CurrencyRegistry::with_iso_4217()
    }
}

impl CurrencyRegistry {
    pub fn empty() -> CurrencyRegistry {
        CurrencyRegistry { currencies: Vec::new() }
    }

    pub fn with_iso_4217() -> CurrencyRegistry {
        let mut registry = CurrencyRegistry::empty();
        for (name, ledger, minor_units) in ISO_4217 {
            registry.register(name, ledger, minor_units).expect("the built-in table is valid and has no duplicates");
        }
        registry
    }

    /// Adds a ledger. Names are stored upper-case and must be unique, as must ledger numbers.
    pub fn register(&mut self, name: &str, ledger: Ledger, minor_units: u8) -> Result<&Currency, CurrencyError> {
        let valid_name = !name.is_empty()
            && name.len() <= CURRENCY_NAME_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(CurrencyError::InvalidName(name.to_owned()));
        }
        if ledger == 0 {
            return Err(CurrencyError::LedgerZero);
        }
        if minor_units > MINOR_UNITS_MAX {
            return Err(CurrencyError::MinorUnitsTooLarge(minor_units));
        }
        let name = name.to_ascii_uppercase();
        if self.by_name(&name).is_some() {
            return Err(CurrencyError::DuplicateName(name));
        }
        if self.by_ledger(ledger).is_some() {
            return Err(CurrencyError::DuplicateLedger(ledger));
        }
        if self.currencies.len() >= CURRENCIES_MAX {
            return Err(CurrencyError::RegistryFull);
        }
        self.currencies.push(Currency { name, ledger, minor_units });
        Ok(self.currencies.last().expect("just pushed"))
    }

    /// Adds a ledger from a configuration entry `NAME:NUMBER:MINOR_UNITS`, e.g. `POINTS:100001:0`.
    pub fn register_spec(&mut self, spec: &str) -> Result<&Currency, CurrencyError> {
        let invalid = || CurrencyError::InvalidSpec(spec.to_owned());
        let mut parts = spec.split(':');
        let (Some(name), Some(ledger), Some(minor_units), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let ledger = ledger.trim().parse::<Ledger>().map_err(|_| invalid())?;
        let minor_units = minor_units.trim().parse::<u8>().map_err(|_| invalid())?;
        self.register(name.trim(), ledger, minor_units)
    }

    /// Case-insensitive lookup by name.
    pub fn by_name(&self, name: &str) -> Option<&Currency> {
        self.currencies.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn by_ledger(&self, ledger: Ledger) -> Option<&Currency> {
        self.currencies.iter().find(|c| c.ledger == ledger)
    }

    pub fn get(&self, name: &str) -> Result<&Currency, CurrencyError> {
        self.by_name(name).ok_or_else(|| CurrencyError::UnknownName(name.to_owned()))
    }

    pub fn get_ledger(&self, ledger: Ledger) -> Result<&Currency, CurrencyError> {
        self.by_ledger(ledger).ok_or(CurrencyError::UnknownLedger(ledger))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Currency> {
        self.currencies.iter()
    }
}

fn scale(minor_units: u8) -> Result<u64, AmountError> {
    if minor_units > MINOR_UNITS_MAX {
        return Err(AmountError::MinorUnitsTooLarge(minor_units));
    }
    Ok(10u64.pow(minor_units as u32))
}

/// Parses `"12"`, `"12.5"`, `"12.50"` into minor units (`1250` for 2 minor units). Refuses signs,
/// spaces, exponents, a lone or trailing `.`, more decimals than `minor_units`, and overflow.
pub fn parse_minor_units(text: &str, minor_units: u8) -> Result<u64, AmountError> {
    let scale = scale(minor_units)?;
    if text.is_empty() {
        return Err(AmountError::Empty);
    }
    if text.len() > AMOUNT_TEXT_BYTES_MAX {
        return Err(AmountError::TooLong);
    }
    if text.starts_with('-') {
        return Err(AmountError::Negative);
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(AmountError::InvalidSyntax);
    }
    let fraction = fraction.unwrap_or("");
    if fraction.len() > minor_units as usize {
        return Err(AmountError::TooManyDecimals { found: fraction.len(), allowed: minor_units });
    }
    let whole_value = digits_value(whole)?;
    // "0.5" with 2 minor units is 50: pad the fraction with the decimals it left out.
    let fraction_scale = 10u64.pow((minor_units as usize - fraction.len()) as u32);
    let fraction_value = digits_value(fraction)? * fraction_scale;
    whole_value.checked_mul(scale).and_then(|v| v.checked_add(fraction_value)).ok_or(AmountError::Overflow)
}

fn digits_value(digits: &str) -> Result<u64, AmountError> {
    digits.bytes().try_fold(0u64, |value, digit| {
        value.checked_mul(10).and_then(|v| v.checked_add((digit - b'0') as u64)).ok_or(AmountError::Overflow)
    })
}

/// Formats minor units with exactly `minor_units` decimals: `1250` with 2 gives `"12.50"`.
/// `minor_units` above [`MINOR_UNITS_MAX`] is clamped (callers get it from a validated registry).
pub fn format_minor_units(minor: u64, minor_units: u8) -> String {
    let minor_units = minor_units.min(MINOR_UNITS_MAX);
    let scale = 10u64.pow(minor_units as u32);
    if minor_units == 0 {
        return minor.to_string();
    }
    format!("{}.{:0width$}", minor / scale, minor % scale, width = minor_units as usize)
}

/// Signed variant for balances: `-150` with 2 gives `"-1.50"`.
pub fn format_signed_minor_units(minor: i64, minor_units: u8) -> String {
    let magnitude = format_minor_units(minor.unsigned_abs(), minor_units);
    if minor < 0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse_minor_units("1.00", 2), Ok(100));
        assert_eq!(parse_minor_units("1", 2), Ok(100));
        assert_eq!(parse_minor_units("0.5", 2), Ok(50));
        assert_eq!(parse_minor_units("0.05", 2), Ok(5));
        assert_eq!(parse_minor_units("12345", 0), Ok(12345));
        assert_eq!(parse_minor_units("1.234", 3), Ok(1234));
        assert_eq!(parse_minor_units("007.10", 2), Ok(710));
        assert_eq!(parse_minor_units("18446744073709551615", 0), Ok(u64::MAX));
        assert_eq!(parse_minor_units("184467440737095516.15", 2), Ok(u64::MAX));
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        assert_eq!(parse_minor_units("", 2), Err(AmountError::Empty));
        assert_eq!(parse_minor_units("-", 2), Err(AmountError::Negative));
        assert_eq!(parse_minor_units("-1", 2), Err(AmountError::Negative));
        for text in [".", "1.", ".5", "+1", "1e3", " 1", "1 ", "1,00", "1.2.3", "0x10", "１"] {
            assert_eq!(parse_minor_units(text, 2), Err(AmountError::InvalidSyntax), "{text:?}");
        }
        assert_eq!(parse_minor_units("1.001", 2), Err(AmountError::TooManyDecimals { found: 3, allowed: 2 }));
        assert_eq!(parse_minor_units("1.0", 0), Err(AmountError::TooManyDecimals { found: 1, allowed: 0 }));
        assert_eq!(parse_minor_units("18446744073709551616", 0), Err(AmountError::Overflow));
        assert_eq!(parse_minor_units("184467440737095516.16", 2), Err(AmountError::Overflow));
        assert_eq!(parse_minor_units("99999999999999999999999", 2), Err(AmountError::Overflow));
        assert_eq!(parse_minor_units(&"1".repeat(65), 0), Err(AmountError::TooLong));
        assert_eq!(parse_minor_units("1", 19), Err(AmountError::MinorUnitsTooLarge(19)));
    }

    #[test]
    fn formats_with_the_currency_decimals() {
        assert_eq!(format_minor_units(100, 2), "1.00");
        assert_eq!(format_minor_units(5, 2), "0.05");
        assert_eq!(format_minor_units(0, 3), "0.000");
        assert_eq!(format_minor_units(1234, 0), "1234");
        assert_eq!(format_minor_units(u64::MAX, 2), "184467440737095516.15");
        assert_eq!(format_signed_minor_units(-150, 2), "-1.50");
        assert_eq!(format_signed_minor_units(i64::MIN, 2), "-92233720368547758.08");
        assert_eq!(format_signed_minor_units(7, 3), "0.007");
    }

    #[test]
    fn registry_knows_iso_and_takes_custom_ledgers() {
        let mut registry = CurrencyRegistry::with_iso_4217();
        for (name, ledger, minor_units) in ISO_4217 {
            let by_name = registry.get(name).expect("built in");
            assert_eq!((by_name.ledger, by_name.minor_units), (ledger, minor_units));
            assert_eq!(registry.get_ledger(ledger).expect("built in").name, name);
        }
        assert_eq!(registry.get("usd").expect("case-insensitive").ledger, 840);
        assert_eq!(registry.get("KWD").expect("built in").parse_amount("1.5"), Ok(1500));
        assert_eq!(registry.get("JPY").expect("built in").format_amount(500), "500");

        let points = registry.register_spec("points:100001:0").expect("valid spec").clone();
        assert_eq!(points, Currency { name: "POINTS".into(), ledger: 100_001, minor_units: 0 });
        assert_eq!(registry.register("Points", 7, 0).err(), Some(CurrencyError::DuplicateName("POINTS".into())));
        assert_eq!(registry.register("GOLD", 840, 0).err(), Some(CurrencyError::DuplicateLedger(840)));
        assert_eq!(registry.register("GOLD", 0, 0).err(), Some(CurrencyError::LedgerZero));
        assert_eq!(registry.register("GOLD", 9, 19).err(), Some(CurrencyError::MinorUnitsTooLarge(19)));
        assert!(matches!(registry.register("", 9, 2), Err(CurrencyError::InvalidName(_))));
        assert!(matches!(registry.register("A-B", 9, 2), Err(CurrencyError::InvalidName(_))));
        for bad in ["GOLD", "GOLD:1", "GOLD:x:2", "GOLD:5:2:1", "GOLD:5:300"] {
            assert!(matches!(registry.register_spec(bad), Err(CurrencyError::InvalidSpec(_))), "{bad}");
        }
        assert_eq!(registry.get("XXX").err(), Some(CurrencyError::UnknownName("XXX".into())));
        assert_eq!(registry.get_ledger(1).err(), Some(CurrencyError::UnknownLedger(1)));
    }

    #[test]
    fn registry_is_bounded() {
        let mut registry = CurrencyRegistry::empty();
        for ledger in 1..=CURRENCIES_MAX as u32 {
            registry.register(&format!("L{ledger}"), ledger, 2).expect("room left");
        }
        assert_eq!(registry.register("ONEMORE", 99_999, 2).err(), Some(CurrencyError::RegistryFull));
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in any::<u64>(), minor_units in 0u8..=MINOR_UNITS_MAX) {
            let text = format_minor_units(minor, minor_units);
            prop_assert_eq!(parse_minor_units(&text, minor_units), Ok(minor));
        }

        #[test]
        fn parse_then_format_gives_canonical_text(whole in 0u64..1_000_000_000, fraction in 0u64..100, decimals in 0usize..=2) {
            let fraction = fraction % 10u64.pow(decimals as u32);
            let text = if decimals == 0 { whole.to_string() } else { format!("{whole}.{fraction:0decimals$}") };
            let minor = parse_minor_units(&text, 2).expect("valid amount");
            prop_assert_eq!(minor, whole * 100 + fraction * 10u64.pow(2 - decimals as u32));
            let canonical = format!("{whole}.{:02}", fraction * 10u64.pow(2 - decimals as u32));
            prop_assert_eq!(format_minor_units(minor, 2), canonical);
        }
    }
}
