"""Project and class names: what is refused (each case its own test), what is accepted, the folder names derived."""

import pytest

from fsl_app.store import InvalidNameError, validate_class_name, validate_project_name
from fsl_app.store.exporting import class_folder_names
from fsl_app.store.names import name_key, project_folder_name, safe_file_name, slugify

try:
    from tests.conftest_store import home, project  # noqa: F401  (pytest fixtures)
except ModuleNotFoundError:
    from conftest_store import home, project  # noqa: F401


def test_class_name_empty_is_refused(project):
    with pytest.raises(InvalidNameError, match="empty"):
        project.add_class("")


def test_class_name_whitespace_only_is_refused(project):
    with pytest.raises(InvalidNameError, match="empty"):
        project.add_class("   \u3000")


def test_class_name_dot_dot_is_refused(project):
    with pytest.raises(InvalidNameError, match="only dots"):
        project.add_class("..")


def test_class_name_single_dot_is_refused(project):
    with pytest.raises(InvalidNameError, match="only dots"):
        project.add_class(".")


def test_class_name_with_slash_is_refused_with_suggestion(project):
    with pytest.raises(InvalidNameError, match=r"contains '/'.*'cats-dogs'"):
        project.add_class("cats/dogs")


def test_class_name_with_backslash_is_refused(project):
    with pytest.raises(InvalidNameError, match=r"contains '\\\\'"):
        project.add_class("cats\\dogs")


def test_class_name_with_nul_is_refused(project):
    with pytest.raises(InvalidNameError, match="U\\+0000"):
        project.add_class("cat\x00")


def test_class_name_with_newline_is_refused(project):
    with pytest.raises(InvalidNameError, match="control characters"):
        project.add_class("cat\nwild")


def test_class_name_with_bidi_override_is_refused(project):
    with pytest.raises(InvalidNameError, match="U\\+202E"):
        project.add_class("gpj.\u202eexe")


def test_class_name_too_long_is_refused(project):
    with pytest.raises(InvalidNameError, match="101 characters.*limit is 100"):
        project.add_class("x" * 101)


def test_class_name_of_exactly_100_characters_is_accepted(project):
    assert project.add_class("x" * 100) == "x" * 100


def test_class_name_not_text_is_refused():
    with pytest.raises(InvalidNameError, match="must be text"):
        validate_class_name(3)


@pytest.mark.parametrize("name", ["chat tigré", "猫", "Ölbaum (jung)", "🐱 cat", "ناقص", "a.b", "rust: stage 2"])
def test_unicode_and_spaces_are_accepted(project, name):
    assert project.add_class(name) == name
    assert name in project.classes()


def test_names_are_nfc_normalised_and_stripped():
    decomposed = "cafe\u0301 "
    assert validate_class_name(decomposed) == "caf\u00e9"


def test_project_name_with_dot_dot_inside_is_refused():
    with pytest.raises(InvalidNameError, match=r"'\.\.'"):
        validate_project_name("v1..v2")


def test_project_name_rules_match_class_rules():
    for bad in ["", "..", "a/b", "a\\b", "a\tb", "y" * 101]:
        with pytest.raises(InvalidNameError):
            validate_project_name(bad)


def test_name_key_ignores_case_and_normalisation():
    assert name_key("Café") == name_key("CAFE\u0301")


def test_slug_and_project_folder_are_ascii_and_distinct():
    assert slugify("Wheat rust (2024)") == "wheat-rust-2024"
    assert slugify("猫") == "project"
    assert project_folder_name("猫") != project_folder_name("犬")
    assert project_folder_name("Birds") == project_folder_name("birds")  # same name, same folder
    assert project_folder_name("猫").isascii()


@pytest.mark.parametrize("raw, safe", [
    ("cats", "cats"), ("a:b*c?", "a_b_c_"), ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("dots...", "dots"),
    ("..", "unnamed"), ("猫", "猫"), ("tab\there", "tab_here"),
])
def test_safe_file_name(raw, safe):
    assert safe_file_name(raw) == safe


def test_class_folder_names_stay_distinct_ignoring_case():
    folders = class_folder_names(["a:b", "a?b", "Big", "big"])
    assert len({name.casefold() for name in folders.values()}) == 4
