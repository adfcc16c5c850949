"""Precision by kind of context, eleventh round of issue 12 (the secrets-tune-x, -y and
-z sets): each case is invented here, not a labelled set's sentence, and each kind has
its look-alike the other way (a decoy that must stay, a secret that must go).

- a line label headed by an identity word and its complement ("Identifiant du
  certificat chez l'hébergeur :") names an identifier, not a pair's or a password's label;
- a code's label whose words name a product or a sale ("code d'activation de la
  licence") gives a product key, a code of activation of an account is a secret;
- the user half of a command's user:secret option ("curl -u SID:secret");
- a table aligned with spaces whose cell overflows a gap: the column's cell is the one
  that starts under its title;
- the text of an XML element named for an identity (<UUID>), and a <Key> element's
  field name;
- a setting whose name ends in an identity word ("psk_identity");
- an interpolation where a value would be ("%{hiera('...')}", "#{ENV[...]}");
- a Proxmox API token's id with a placeholder for its secret;
- the end of a range of numbered identifiers ("PC-CDI-0401 à PC-CDI-0412");
- a link made of words in a password column (a link with a token is still secret);
- a line that an account's label opens ("Compte : asso-velo-44");
- a value that the words after it equate to a postcode or a phone number.
"""

from __future__ import annotations

import pytest

from support.secret_text import check

ALIGNED = """Inventaire après la visite :

  Poste          Adresse       Compte    Mot de passe      Version
  -------------  ------------  --------  ----------------  -------
  Borne accueil  10.2.0.11     borne     Tilleul#Rond42    3.1.4
  Routeur principal 10.2.0.1   admin     Pivoine$Carre17   22.4.9
"""


@pytest.mark.parametrize(("text", "gone", "kept"), [
    # identity head: the certificate's id at the host stays, its password goes
    ("Bonjour,\nMot de passe du certificat : Gx7!mPq2Rt\n"
     "Identifiant du certificat chez l'hébergeur : CRT-mairie-2026-07\nMerci\n",
     ["Gx7!mPq2Rt"], ["CRT-mairie-2026-07"]),
    # ... but a pair's label headed by "Identifiant" gives the password after the slash
    ("Identifiant et mot de passe du portail : jdurand / Vx8#nLq4Ws\n",
     ["Vx8#nLq4Ws"], ["jdurand"]),
    ("Numéro de la borne du hall : Bn7-Hall-2031\nMot de passe de la borne : Ormeau!Vif62\n",
     ["Ormeau!Vif62"], ["Bn7-Hall-2031"]),
    # a product's activation code stays; an account's activation code goes
    ("Le code d'activation de la licence du correcteur : AX7Q-KM42-PW9R-TT3L\n"
     "Le code d'activation de votre compte : HV3K-9QPM-7XWR\n",
     ["HV3K-9QPM-7XWR"], ["AX7Q-KM42-PW9R-TT3L"]),
    ("Code d'activation du produit (à saisir au premier lancement) : Q7RT-4PLM-99XK\n",
     [], ["Q7RT-4PLM-99XK"]),
    # the user half of "curl -u ID:SECRET" stays, the secret goes
    ("curl -s -u SKa1b2c3d4e5f60718293a4b5c6d7e8f90:f0e1d2c3b4a5968778695a4b3c2d1e0f "
     "https://api.example.net/v1/calls\n",
     ["f0e1d2c3b4a5968778695a4b3c2d1e0f"], ["SKa1b2c3d4e5f60718293a4b5c6d7e8f90"]),
    # ... a token alone as the user, before an empty password, is the secret
    ("curl https://api.stripe.example/v1/charges -u sk_live_4eC39HqLyjWDarjtT1zdp7dc:\n",
     ["sk_live_4eC39HqLyjWDarjtT1zdp7dc"], []),
    # an aligned table whose second row overflows its first gap
    (ALIGNED, ["Tilleul#Rond42", "Pivoine$Carre17"], ["22.4.9", "3.1.4", "10.2.0.1"]),
    # KeePass-like XML: the entry's UUID and field names stay, the password goes
    ("<Entry>\n\t<String><Key>Password</Key><Value>Bruyere!Haute58</Value></String>\n"
     "\t<String><Key>Notes</Key><Value>baie 2</Value></String>\n</Entry>\n<Entry>\n"
     "\t<UUID>Hk2Wq9LmX4pT7vR3sN8bYc==</UUID>\n</Entry>\n",
     ["Bruyere!Haute58"], ["Hk2Wq9LmX4pT7vR3sN8bYc==", "<Key>Notes</Key>"]),
    # a setting named for a secret's identity stays, its secret's setting goes
    ("monitoring::agent::tls_psk_identity: 'PSK-Mairie07x'\n"
     "monitoring::agent::db_password: 'Ver7-Rocher!2'\n",
     ["Ver7-Rocher!2"], ["PSK-Mairie07x"]),
    ("SMTP_RELAY_PASSWORD_USER=relais-Nord7\nSMTP_RELAY_PASSWORD=Pl8#quai-Sud\n",
     ["Pl8#quai-Sud"], ["relais-Nord7"]),
    # an interpolation stays, a literal value beside it goes
    ("nextcloud::admin_password: \"%{hiera('secrets::nextcloud_admin')}\"\n"
     "nextcloud::db_password: \"Kx8!Lune-Verte\"\n",
     ["Kx8!Lune-Verte"], ["%{hiera('secrets::nextcloud_admin')}"]),
    ("smtp:\n  password: \"#{ENV['SMTP_PASS']}\"\n  backup_password: \"Gr4ve-Lin!05\"\n",
     ["Gr4ve-Lin!05"], ["#{ENV['SMTP_PASS']}"]),
    # a Proxmox token's id with a placeholder stays; with its secret, the secret goes
    ("Header sent: Authorization: PVEAPIToken=backup@pbs!nightly=<token>\n",
     [], ["PVEAPIToken=backup@pbs!nightly=<token>"]),
    ("Authorization: PVEAPIToken=backup@pbs!nightly=3f1c9a2e-7b4d-4e8f-a1c2-9d8e7f6a5b4c\n",
     ["3f1c9a2e-7b4d-4e8f-a1c2-9d8e7f6a5b4c"], ["backup@pbs!nightly"]),
    # a range of numbered identifiers stays, the password on the line before goes
    ("- mot de passe du BIOS fixé à Craie_Tableau_35 sur les 12 portables\n"
     "- leurs numéros de série vont de R9KT4WX2 à R9KT4WX9\n",
     ["Craie_Tableau_35"], ["R9KT4WX2", "R9KT4WX9"]),
    ("BIOS password set to Mast-Harbor_81 on the laptops,\nserials 5CG2Q7K1 through 5CG2Q7K6.\n",
     ["Mast-Harbor_81"], ["5CG2Q7K1", "5CG2Q7K6"]),
    # a password column: a link of words stays, a share link with its token goes
    ("| Service | Compte | Mot de passe ou lien |\n|---|---|---|\n"
     "| Agenda | agenda-ccas | Ruche!Dorée41 |\n"
     "| Sondage | lecture seule | https://sondage.mairie-exemple.fr/resultats/public |\n"
     "| Partage | lien | https://cloud.mairie-exemple.fr/s/Xq7LmP2kRt9Wz |\n",
     ["Ruche!Dorée41", "Xq7LmP2kRt9Wz"],
     ["https://sondage.mairie-exemple.fr/resultats/public", "agenda-ccas"]),
    # an account's line stays; the password of the account goes
    ("Sur la fiche \"Hébergement - accès\" il y a :\n\n"
     "Clé secrète : Wq8vR2nLx7mT4pZk9cB3yH6d\nCompte : hb31877-web\n\nOn la garde ?\n",
     ["Wq8vR2nLx7mT4pZk9cB3yH6d"], ["hb31877-web"]),
    ("Le mot de passe du compte : Selle!Bleue31\n", ["Selle!Bleue31"], []),
    # a value said to be the postcode stays; a code said not to be goes
    ("le portail demande un code, c'est 44210 comme le code postal ? ça ne marche pas\n",
     [], ["44210"]),
    ("le code du portail c'est 4421, pas le code postal\n", ["4421"], []),
])
def test_round11_precision(text: str, gone: list[str], kept: list[str]) -> None:
    check(text, gone, kept)
