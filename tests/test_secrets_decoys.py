"""Look-alikes by kind: values near a password, key or code label that open nothing.

Each case is one *kind* of decoy (invented here, in the shapes mail takes): a key or
code whose qualifier says what it is (a licence, a booking, a course, a parcel), a
fragment of a password ("se termine par 42"), a masked value, a network's or a device's
name written right before the value, a phrase that says where the password is, a link
after a password label.  Beside them, the real secrets of the same sentences must still
be found, and the two detectors added with these vetoes: a strong value anywhere near a
password label, and a code written before its label.
"""

from __future__ import annotations

import pytest

from helpdesk_milter.secrets import SecretScanner, redact_spans

SCANNER = SecretScanner()


def redacted(text: str) -> str:
    return redact_spans(text, SCANNER.scan(text))


@pytest.mark.parametrize(("text", "keep"), [
    # a key or a code qualified as something that opens nothing
    ("License key: 7XQ4-PLM2-99RT-KZ3W", "7XQ4-PLM2-99RT-KZ3W"),
    ("Product key: 6NMRW-2C8FM-D24W7-TQWMY-CWH2D (Office 2019)",
     "6NMRW-2C8FM-D24W7-TQWMY-CWH2D"),
    ("Clé d'activation Office : KX9QW-2M7PD-TT4HX-88RJZ-CBV3Q",
     "KX9QW-2M7PD-TT4HX-88RJZ-CBV3Q"),
    ("Votre code de réservation : QX7P2M", "QX7P2M"),
    ("Course code CS50x2026", "CS50x2026"),
    ("Code UE : INF3041, le mot de passe Moodle est Moodle!Ete26", "INF3041"),
    ("Coupon code SAVE20NOW", "SAVE20NOW"),
    ("Code de suivi : LP7712345678FR", "LP7712345678FR"),
    ("code wifi : GuestCafe2025 ; code promo : CAFE2025 ; code postal 13002", "CAFE2025"),
    # a fragment, a masked value
    ("Carte bancaire, le code ? Jamais. Carte se terminant par 4417", "4417"),
    ("password ending in ***8Kq", "***8Kq"),
    ("Mon mot de passe se termine par Zq42", "Zq42"),
    # the name of a network or a device, right before the value
    ("Mot de passe Wi-Fi (réseau Mairie_Guest) : à demander à l'accueil", "Mairie_Guest"),
    ("Wi-Fi : SSID Livebox-A3F2, clé WPA Qk7-mer-Zt91", "Livebox-A3F2"),
    # where the password is, not what it is
    ("Le mot de passe est « l'habituel », pas besoin de le redonner", "l'habituel"),
    # a link after a password label
    ("Je n'arrive pas à me connecter avec mon mot de passe sur le site "
     "https://espace.asso-velo.fr/login?next=/a7f3k9", "https://espace.asso-velo.fr/login?next=/a7f3k9"),
    # near a password label, strong-looking names: a device's, a user's, an old value
    ("Le mot de passe de la box ne marche plus, le réseau Livebox-7C3A a disparu.",
     "Livebox-7C3A"),
    ("Mot de passe oublié pour l'utilisateur JSmith_1987, pouvez-vous le réinitialiser ?",
     "JSmith_1987"),
    ("Le mot de passe a changé : l'ancien, Tilleul#2019, ne marche plus.", "Tilleul#2019"),
    # a product's model in the window after a password label
    ("Pour le NAS, le mot de passe admin est sur l'autocollant.\n"
     "Le modèle c'est un Synology DS220+, nom réseau NAS-COMPTA-02.", "DS220+"),
    # the user named across a verb
    ("Le mot de passe s'affiche ********. L'utilisateur c'est COMPTA_Asso3.", "COMPTA_Asso3"),
    # HTML source: a <code> element is no code label
    ("<b>identifiant</b> : <code>adh-2026-0318</code>, <b>mot de passe</b> : "
     "<code>Velo&amp;Co-318</code>", "adh-2026-0318"),
    # a quoted realm is a phrase, not a token (nginx auth_basic)
    ('location / {\n    auth_basic "Preprod ecole-des-pins v3";\n}', "Preprod ecole-des-pins v3"),
    # an object id with a lower-case prefix near a secret
    ("Signing secret: whsec_8Kq2Vx7Lm4Tz9Rw1Pc6Nb3Yh5Jd0Fs2Ga\nCustomer: cus_RkQ2mV7xLp9T",
     "cus_RkQ2mV7xLp9T"),
    # codes announced as counting codes, row by row
    ("Chaque service a un code pour le comptage des copies :\n  Urbanisme   code 1203\n"
     "  État civil  code 1207\n", "code 1207"),
    # two hyphenated words are a term, not a passphrase
    ("Use a password of your e-mail address. After logging in, type \"cd internet-drafts\"",
     "internet-drafts"),
    # a device's name near "Wi-Fi"
    ("Le Wi-Fi ne marche plus, la box Livebox-7C3A clignote.", "Livebox-7C3A"),
    # a column titled "Code" beside no column of doors or networks
    ("Les références :\nArticle | Désignation | Code\nCâble | HDMI 2 m | CBL-2231\n",
     "CBL-2231"),
    # near a password label, a term and an HTML entity that have the shape of a password
    ("here are the credentials for the S3-compatible bucket; password Kx7!pLm2q9",
     "S3-compatible"),
    ("The password for the reminders is the old one. The new one is in Ben&#8217;s mail.",
     "Ben&#8217;s"),
    # near an account word with no password label: a value with no password symbol, or
    # one that the word names
    ('Account 2FA app: Authy, device "Pixel7-Ops".', "Pixel7-Ops"),
    ("Can you unlock the login JSmith#1987 on the shop?", "JSmith#1987"),
])
def test_decoy_is_kept(text: str, keep: str) -> None:
    assert keep in redacted(text)


@pytest.mark.parametrize(("text", "secret"), [
    # a code of a device's activation opens it (a licence's key does not)
    ("Activation code: 4471-0982-3365\nThe activation code can be used once.",
     "4471-0982-3365"),
    # a user code names the code, not a user
    ("Photocopieuse : code utilisateur 3308", "3308"),
    # a strong value near a password label, before it or in a correction
    ("Oui c'est bien Mistral-42 pour le compte régie.\n\n> tu peux me redonner le mdp ?",
     "Mistral-42"),
    ("le mot de passe c'est Cantine#2025... non pardon, c'est Cantine#2026", "Cantine#2026"),
    ("Re: identifiants wifi école -> WifiPins!2026", "WifiPins!2026"),
    # a code before its label
    ("Pour ce soir : 8841, c'est le code de l'alarme du théâtre.", "8841"),
    # the password in HTML source, after its label's closing tag and inside <code>
    ("<b>mot de passe</b> : <code>Velo&amp;Co-318</code></p>", "Velo&amp;Co-318"),
    # three groups of three digits; an alarm disarmed with a code; a year right after
    # its label
    ("et le code d'accès à la salle virtuelle : 663 901 448.", "663 901 448"),
    ("Pour entrer : l'alarme se désactive avec 1 9 7 3 puis la touche OFF.", "1 9 7 3"),
    ("TR: Intervention jeudi - code portail 8842A / alarme 1966", "1966"),
    # a list of codes announced by a sentence that ends a line later, or by a heading
    ("These are the 2FA recovery codes for the admin account, she'll store\n"
     "them in our vault:\n\n    48210-77391\n    90347-16628\n", "90347-16628"),
    ("GitHub recovery codes for gh-ops-bot\n  a7f3c-92e1d\n  4b8e0-d61fa\n", "4b8e0-d61fa"),
    # an "@" for an "a" in a password with dots
    ("identifiant mb12345-ovh et mot de passe\nM@irie.Exemple.1789\nLe domaine expire.",
     "M@irie.Exemple.1789"),
    # a passphrase: alone on the next line, or words with a number before a bracket
    ('for the shared "Board" folder the password will be\ncorrect horse lemon tide\n',
     "correct horse lemon tide"),
    ("Le réseau c'est TDP-Foyer, clé WPA2 : Marée haute 1987 (avec les espaces).",
     "Marée haute 1987"),
    # a bracketed aside between a label and its value
    ("la clé wifi du nouveau local (box Orange, SSID Livebox-7A3C) : 4kT9vQm2Lx7WpR3zNc",
     "4kT9vQm2Lx7WpR3zNc"),
    # a strong value near "Wi-Fi" alone; words joined by hyphens after a Wi-Fi label
    ("Fwd: Wi-Fi for Thursday's workshop (GH-Event / Radish-Rain-12)", "Radish-Rain-12"),
    ("Le nouveau code wifi pour la salle d'attente du CCAS : ACCUEIL-SOCIAL-DU-PORT (tout "
     "en majuscules).", "ACCUEIL-SOCIAL-DU-PORT"),
    # a column titled "Code" beside a column of doors: a table of access codes
    ("Les codes :\nBâtiment | Porte | Code\nGymnase | local matériel | 7730\n"
     "Cantine | livraisons | *2291#\n", "*2291#"),
    # near a login or account word, a strong value with a password's symbol
    ("Hunter9!Moss -- that's the shared Figma login, account is design@example.com.",
     "Hunter9!Moss"),
    # a weak label ("pass on") leaves the label after it its own window
    ("Dan asked me to pass on the new guest Wi-Fi passphrase, he picked four random words: "
     "correct-maple-ferry-lantern. The order ref was PO-2026-0088.",
     "correct-maple-ferry-lantern"),
])
def test_secret_is_found(text: str, secret: str) -> None:
    assert secret not in redacted(text)
