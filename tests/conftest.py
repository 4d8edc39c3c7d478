pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.postgres",
    "tests.fixtures.messaging",
    "tests.fixtures.gateway",
    "tests.fixtures.processes",
    "tests.fixtures.tasks",
    "tests.fixtures.backing",
    "tests.fixtures.containers",
    "tests.fixtures.mail",
]
