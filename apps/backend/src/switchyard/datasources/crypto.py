"""Encryption of data source URLs at rest: Fernet keys from DATA_SOURCE_KEYS, newest first.

The first key encrypts; every key decrypts, so a new key goes in front and the old ones stay
until `rotate` has re-encrypted every row. Without keys (development and standalone only;
production refuses to start) one key is generated once into LOCAL_SECRETS_DIR (default
VAR_DIR)/data-source.key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from switchyard.errors import SwitchyardError
from switchyard.settings import Settings, local_secret

KEY_FILE: Final = "data-source.key"


class UndecryptableError(SwitchyardError):
    status = 500
    code = "undecryptable"
    title = "Stored secret cannot be decrypted"


def _local_key(directory: Path) -> bytes:
    """The development key, made on first use."""
    return local_secret(directory / KEY_FILE, Fernet.generate_key)


class DataSourceCipher:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> DataSourceCipher:
        keys = [key.get_secret_value().encode() for key in settings.data_source_keys]
        return cls(keys or [_local_key(settings.secrets_dir)])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise UndecryptableError(
                "A stored connection URL cannot be decrypted with DATA_SOURCE_KEYS; "
                "was a key removed before rotation?"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """The same plaintext, encrypted with the newest key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise UndecryptableError("A stored connection URL cannot be decrypted") from None
