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

from support.secret_text import redacted


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
    # the identifier half of a key/secret pair (the secret of the same name goes)
    ("Clés du registrar :\nApplication Key : 9mRt2XwQ7LpZ4vKc\n"
     "Application Secret : Vb7Nq2Lx9Wk4Tz1Rc8Ym3Hs6Jd0Fg5Pa\n", "9mRt2XwQ7LpZ4vKc"),
    ("<br>Application Key : 9mRt2XwQ7LpZ4vKc<br>Application Secret : "
     "Vb7Nq2Lx9Wk4Tz1Rc8Ym3Hs6Jd0Fg5Pa<br>", "9mRt2XwQ7LpZ4vKc"),
    ('export MINIO_ACCESS_KEY="mk8QzT2vLr7NwX4p"\n'
     'export MINIO_SECRET_KEY="Zr5Lq9Wx2Tk7Nc4Vb8Hm1Js6Pd3Fg0Ya"\n', "mk8QzT2vLr7NwX4p"),
    # a log's phrase is no label: the next line's words are no password
    ("Mar  3 04:12:09 web01 sshd[4411]: Failed password for invalid user test from "
     "203.0.113.9 port 40112 ssh2\nnginx2 relance ensuite le service", "nginx2"),
    # a state, not a value
    ("Le lien s'ouvre, mais le mot de passe est refusé. Une faute de frappe ?", "refusé"),
    ("SSID\tClé\nVILLE-INVITES\touvert\nVILLE-STAFF\tQx7!mairie-88\n", "ouvert"),
    # code where a value would be: a variable's name, a substitution, a command with its
    # argument, a link's path, a key's management type
    ("| Clé                  | Valeur             | Masquée |\n"
     "|----------------------|--------------------|---------|\n"
     "| CI_REGISTRY_PASSWORD | [MASKED]           | oui     |\n"
     "| SFTP_HOST            | web-03.example.org | non     |\n"
     "| SMTP_PASS            | (masquée)          | oui     |\n", "SFTP_HOST"),
    ("| Clé | Valeur |\n|-----|--------|\n| SMTP_PASSWORD | (masquée) |\n", "(masquée)"),
    ('SMTP_PASSWORD="$(pass show mail/relay)"', "$(pass"),
    ("$secure = ConvertTo-SecureString $plain -AsPlainText -Force\n"
     "$pwd = Read-Host 'Mot de passe' -AsSecureString", "Read-Host"),
    ('{"message":"Bad credentials","documentation_url":"https://docs.example.org/auth"}',
     "/docs.example.org/auth"),
    ("wpa_key_mgmt=SAE\nwpa_passphrase=Tr3fle-Rouge-Mai-2026", "wpa_key_mgmt=SAE"),
    # where the password is kept, not what it is
    ("The admin password from Bitwarden2 does not work either.", "Bitwarden2"),
    # a pre-signed link's other parameters; a plain URL's user
    ("https://b.s3.amazonaws.com/f.zip?X-Amz-Date=20260214T101502Z&X-Amz-Expires=900"
     "&X-Amz-Signature=5e1c9a7f3b2d8e4a6c0f9b7d1e3a5c2f", "X-Amz-Expires=900"),
    ("Le dépôt : https://deploy-bot-mairie@git.example.org/site.git (lecture seule)",
     "deploy-bot-mairie"),
    # key/secret pairs, public keys, commit ids, a JWT's header alone, an id's name
    ("RECAPTCHA_SITE_KEY=6LdQ7mKpAAAAAXr3Tz9Lq2Vn8Wb4Yc1Hd6Jf0sEa\n"
     "RECAPTCHA_SECRET_KEY=6LdQ7mKpAAAAAKq8Zt2Lm9Xr4Vn7Wb1Yc3Hd6Jf0",
     "6LdQ7mKpAAAAAXr3Tz9Lq2Vn8Wb4Yc1Hd6Jf0sEa"),
    ("define('ALGOLIA_SEARCH_KEY', '2c9e7b4a1f8d3e6c0a5b9f2d7e1c4a8b');",
     "2c9e7b4a1f8d3e6c0a5b9f2d7e1c4a8b"),
    ("Keys in use:\npublishable: pk_live_51Qx7Lm2Vb9Tz4Rk8Wc1Hn5Yp3Jd6Fs0Ga2EkTq\n"
     "Invoice that failed: in_1QzR8Lm2Kp7Vx4Tn9Wb3Y\n", "in_1QzR8Lm2Kp7Vx4Tn9Wb3Y"),
    ("MAPBOX_TOKEN=pk.eyJ1IjoiZ3JlZW5ob3VzZSIsImEiOiJjbHo4In0.Qz8Lm2Xr7Kp4Vn9Wb1Yc3H",
     "pk.eyJ1IjoiZ3JlZW5ob3VzZSIsImEiOiJjbHo4In0.Qz8Lm2Xr7Kp4Vn9Wb1Yc3H"),
    ("Le pipeline utilise le jeton du projet, puis :\n$ git checkout "
     "8c2e4a6f1b3d5e7a9c0f2b4d6e8a1c3f5b7d9e0a\n", "8c2e4a6f1b3d5e7a9c0f2b4d6e8a1c3f5b7d9e0a"),
    ("Dans la console, l'en-tête du jeton est :\n\neyJhbGciOiJSUzI1NiIsImtpZCI6Ims0In0\n\n"
     "soit l'algorithme RS256.", "eyJhbGciOiJSUzI1NiIsImtpZCI6Ims0In0"),
    ("Key: backups/2026/db.sql.zst   Size: 0\nVersionId: 7HqLm2kT9vXz4RcN8pWb3Yd1Fs6Ja0E\n",
     "7HqLm2kT9vXz4RcN8pWb3Yd1Fs6Ja0E"),
    ("export TWILIO_ACCOUNT_SID=AC7e1c9a4f2b8d3e6a0c5f9b7d2e4a8c61\n"
     "export TWILIO_AUTH_TOKEN=5f2b8d3e6a0c7e1c9a4f9b7d2e4a8c61",
     "AC7e1c9a4f2b8d3e6a0c5f9b7d2e4a8c61"),
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
    # the secret half of a key/secret pair, and a key with no secret of its name
    ("Application Key : 9mRt2XwQ7LpZ4vKc\nApplication Secret : Vb7Nq2Lx9Wk4Tz1Rc8Ym3Hs6Jd0Fg5Pa",
     "Vb7Nq2Lx9Wk4Tz1Rc8Ym3Hs6Jd0Fg5Pa"),
    ("Application Secret : Vb7Nq2Lx9Wk4Tz1Rc8Ym3Hs6Jd0Fg5Pa\nConsumer Key : "
     "Qt4Wm8Zx1Lr6Nc3Vb9Hs2Jd7Pf5Ga0Ky", "Qt4Wm8Zx1Lr6Nc3Vb9Hs2Jd7Pf5Ga0Ky"),
    ("DD_API_KEY=4f1c9a7e2b8d6035f1e9c7a2b4d8e6f0\nDD_APP_KEY="
     "9e2b7c4a1f8d6035e1c9a7f2b4d8e6c0a1b3d5f7", "9e2b7c4a1f8d6035e1c9a7f2b4d8e6c0a1b3d5f7"),
    # an AWS access key id is still redacted beside its secret (AWS's own scanners flag it)
    ("AWS_ACCESS_KEY_ID=AKIAQ4ZL7MXN2RPW6HCT\n"
     "AWS_SECRET_ACCESS_KEY=r7Vx2Lm9RkT4pW0sNcY8bJ3eHf6uGa1zDiQo5XrE", "AKIAQ4ZL7MXN2RPW6HCT"),
    # a bank's memorable word; a label, an aside, then the colon
    ("> Customer number: 00318842\n> Memorable word: lighthouse\n", "lighthouse"),
    ("Mot mémorable : coquelicot\n", "coquelicot"),
    ("Passphrase, as we said on Monday: violet-river-stone-candle\nKey id: 0x3B7C",
     "violet-river-stone-candle"),
    ("Le mot de passe de la box, celui qu'on a mis hier : Kx7!mer-Zt91 voilà", "Kx7!mer-Zt91"),
    # a plain login, a slash, a password of all four classes, near an account word
    ("sur le post-it pour le logiciel : mdurand / Pivoine_des_Bois42\nle compte est bloqué",
     "Pivoine_des_Bois42"),
    # a token standing as a URL's user, with no password or a dummy one
    ("SENTRY_DSN=https://9c1e7a4f2b8d3e60a5c9f1b7d2e4a8c6@o44211.ingest.sentry.io/61873",
     "9c1e7a4f2b8d3e60a5c9f1b7d2e4a8c6"),
    ("push URL: https://Rk7Wq2Zm9Xv4Lp8TnB3c:x@status.example.org/api/push",
     "Rk7Wq2Zm9Xv4Lp8TnB3c"),
    # the signature of a pre-signed link
    ("https://bucket.s3.eu-west-3.amazonaws.com/f.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Expires=900&X-Amz-Signature=5e1c9a7f3b2d8e4a6c0f9b7d1e3a5c2f8b4d6e0a9c7f1b3d5e2a"
     "4c6f8b0d7e9a1c", "5e1c9a7f3b2d8e4a6c0f9b7d1e3a5c2f8b4d6e0a9c7f1b3d5e2a4c6f8b0d7e9a1c"),
    # a password after a place word that is no source, a strong value after a log line
    ("Le mot de passe du wifi dans la salle est Cerisier-Bleu-82.", "Cerisier-Bleu-82"),
    ("Failed password for bob from 10.0.0.4\nle mot de passe de bob c'est Haricot!Vert42",
     "Haricot!Vert42"),
])
def test_secret_is_found(text: str, secret: str) -> None:
    assert secret not in redacted(text)
