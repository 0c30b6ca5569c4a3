"""The ISO 4217 currencies the service accepts, with the number of decimals each allows."""

# Minor units per ISO 4217. Amounts travel with scale 2, so currencies with three minor units
# are accepted with at most two decimals.
SUPPORTED_CURRENCIES: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "CHF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "RON": 2,
    "BGN": 2,
    "ILS": 2,
    "TRY": 2,
    "ZAR": 2,
    "BRL": 2,
    "MXN": 2,
    "ARS": 2,
    "CLP": 0,
    "COP": 2,
    "PEN": 2,
    "INR": 2,
    "CNY": 2,
    "HKD": 2,
    "SGD": 2,
    "TWD": 2,
    "THB": 2,
    "MYR": 2,
    "PHP": 2,
    "IDR": 2,
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "AED": 2,
    "SAR": 2,
    "QAR": 2,
    "KWD": 3,
    "BHD": 3,
    "JOD": 3,
    "OMR": 3,
    "EGP": 2,
    "NGN": 2,
    "KES": 2,
    "MAD": 2,
    "ISK": 0,
}


def minor_units(currency: str) -> int | None:
    """Decimals allowed for a supported currency code (upper case), None if unsupported."""
    return SUPPORTED_CURRENCIES.get(currency)
