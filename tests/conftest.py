pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.postgres",
    "tests.fixtures.gateway",
    "tests.fixtures.processes",
]
