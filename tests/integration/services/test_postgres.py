from __future__ import annotations

from sqlalchemy import text

from switchyard.services.container import Services
from tests.fixtures.gateway import SettingsFactory


async def test_engine_takes_pool_and_timeouts_from_settings(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        database_pool_size=3,
        database_max_overflow=2,
        database_pool_timeout_seconds=4.5,
        database_statement_timeout_ms=1234,
    )
    services = Services.create(settings, "api-gateway")
    assert services.database is not None
    try:
        pool = services.database.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 2  # type: ignore[attr-defined]
        assert pool._timeout == 4.5  # type: ignore[attr-defined]
        assert pool._pre_ping is False  # only idle connections are pinged
        async with services.database.connect() as connection:
            assert await connection.scalar(text("SHOW statement_timeout")) == "1234ms"
            name = await connection.scalar(text("SELECT current_setting('application_name')"))
            assert name == "switchyard-api-gateway"
    finally:
        await services.close()


async def test_without_database_url_there_is_no_engine_and_the_check_is_disabled(
    make_settings: SettingsFactory,
) -> None:
    services = Services.create(make_settings(database_url=None, redis_url=None), "api-gateway")
    report = await services.health_monitor().report()
    assert services.database is None
    assert report.checks["postgres"].status == "disabled"
    assert report.checks["redis"].status == "disabled"
    assert services.enabled()["postgres"] is False
