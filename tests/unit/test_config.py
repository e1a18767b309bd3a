import os

import pytest

from app.config import ConfigError, load_settings


def settings(**env: str):
    return load_settings({k.upper(): v for k, v in env.items()}, dotenv=os.devnull)


def test_defaults_are_valid_and_use_the_embedded_database():
    s = settings()
    assert s.port == 8000 and s.host == "127.0.0.1"
    assert s.effective_database_url.endswith(":54329/wealth_terminal")
    assert s.redis_url is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"port": "eighty"}, "PORT"),
        ({"port": "70000"}, "PORT"),
        ({"migrate_on_start": "maybe"}, "MIGRATE_ON_START"),
        ({"access_token_ttl": "3600"}, "ACCESS_TOKEN_TTL"),
        ({"trusted_proxies": "10.0.0.0/8,not-a-net"}, "TRUSTED_PROXIES"),
        ({"env": "staging"}, "ENV"),
        ({"env": "production"}, "JWT_SECRET"),
        ({"jwt_secret": "short"}, "JWT_SECRET"),
        ({"bcrypt_rounds": "10"}, "BCRYPT_ROUNDS"),
        ({"market_feed": "polygon"}, "POLYGON_API_KEY"),
        ({"web_workers": "0"}, "WEB_WORKERS"),
        ({"web_workers": "2"}, "WEB_WORKERS"),  # without REDIS_URL: nothing would be shared
    ],
)
def test_an_invalid_value_names_the_variable(env, named):
    with pytest.raises(ConfigError) as err:
        settings(**env)
    assert named in str(err.value)


def test_lists_and_booleans_parse():
    s = settings(trusted_proxies="10.0.0.0/8, 192.168.1.1", migrate_on_start="false", redis_url="")
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert s.migrate_on_start is False and s.redis_url is None


def test_dotenv_is_read_and_environment_wins(tmp_path):
    f = tmp_path / ".env"
    f.write_text("PORT=9001\nLOG_LEVEL=DEBUG\n")
    s = load_settings({"PORT": "9002"}, dotenv=f)
    assert s.port == 9002 and s.log_level == "DEBUG"


def test_development_signing_key_is_generated_once_and_kept(tmp_path):
    s = settings(data_dir=str(tmp_path))
    first = s.signing_key()
    assert len(first) >= 32 and first == s.signing_key()
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def test_every_setting_is_documented_in_readme_and_env_example():
    import msgspec

    from app.config import PROJECT_ROOT, Settings

    readme = (PROJECT_ROOT / "README.md").read_text()
    example = (PROJECT_ROOT / ".env.example").read_text()
    names = [f.name.upper() for f in msgspec.structs.fields(Settings)]
    assert [n for n in names if f"`{n}`" not in readme] == []
    assert [n for n in names if f"# {n}=" not in example] == []
