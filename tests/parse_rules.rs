//! One `reject_*` test per parsing rule of untrusted input (and `accept_*` where the rule has
//! a lenient side that real SDKs need). Errors name the field and never carry the value.

use iotauth::*;

const MD5_HEX: &str = "62B02E9E796F326F231C15FD6482B789";

fn client_id(text: &str) -> Result<ClientId<'_>, ParseError> {
    ClientId::parse(text)
}

fn err(text: &str) -> ParseError {
    client_id(text).expect_err("must be refused")
}

// --- client id: shape ---

#[test]
fn reject_client_id_over_1024_bytes() {
    let long = format!(
        "{}|securemode=2|",
        "c".repeat(ConnectRequest::MAX_CLIENT_ID_LEN)
    );
    assert_eq!(
        err(&long),
        ParseError::TooLong {
            field: "clientId",
            max: 1024
        }
    );
}

#[test]
fn accept_client_id_of_exactly_1024_bytes() {
    let suffix = "|securemode=2|";
    let exact = format!(
        "{}{suffix}",
        "c".repeat(ConnectRequest::MAX_CLIENT_ID_LEN - suffix.len())
    );
    assert!(client_id(&exact).is_ok());
}

#[test]
fn reject_client_id_without_parameter_block() {
    assert!(matches!(
        err("just-a-client-id"),
        ParseError::Malformed {
            field: "clientId",
            ..
        }
    ));
}

#[test]
fn reject_client_id_without_closing_pipe() {
    assert!(matches!(
        err("core|securemode=2"),
        ParseError::Malformed {
            field: "clientId",
            ..
        }
    ));
}

#[test]
fn reject_text_after_the_last_pipe() {
    assert!(matches!(
        err("core|securemode=2|tail"),
        ParseError::Malformed {
            field: "clientId",
            ..
        }
    ));
}

#[test]
fn reject_empty_core() {
    assert_eq!(
        err("|securemode=2|"),
        ParseError::Missing { field: "clientId" }
    );
}

#[test]
fn reject_control_character_in_core() {
    assert_eq!(
        err("co\u{1b}re|securemode=2|"),
        ParseError::InvalidCharacter { field: "clientId" }
    );
}

#[test]
fn accept_pipe_inside_a_value() {
    let id = client_id("mini|securemode=2,lan=JS|WX|").unwrap();
    assert_eq!(id.extensions().collect::<Vec<_>>(), [("lan", "JS|WX")]);
}

// --- client id: items ---

/// Link SDK 4.0 with no extended client id ends its block `…,ext=3,|`; Python linkkit's
/// unescaped `sii` can cut an item without `=`. Neither is signed, so neither refuses a login;
/// a key this crate reads must still have its `=`.
#[test]
fn accept_empty_items_and_items_without_equals_but_not_a_known_key_without_one() {
    let id = client_id("c|securemode=2,,ext=3,|").unwrap();
    assert_eq!(id.extensions().collect::<Vec<_>>(), [("ext", "3")]);
    let id = client_id("c|securemode=2,sii=a,b,lan=Python|").unwrap();
    assert_eq!(
        id.extensions().collect::<Vec<_>>(),
        [("sii", "a"), ("b", ""), ("lan", "Python")]
    );
    assert!(matches!(
        err("c|securemode=2,signmethod|"),
        ParseError::Malformed {
            field: "clientId parameter",
            ..
        }
    ));
    assert_eq!(
        err("c|securemode=2,b,b|"),
        ParseError::Duplicate {
            field: "clientId parameter"
        }
    );
}

#[test]
fn reject_empty_key() {
    assert_eq!(
        err("c|securemode=2, =x|"),
        ParseError::Missing {
            field: "clientId parameter key"
        }
    );
}

#[test]
fn reject_duplicate_known_key() {
    assert_eq!(
        err("c|securemode=2,securemode=3|"),
        ParseError::Duplicate {
            field: "securemode"
        }
    );
}

#[test]
fn reject_duplicate_unknown_key() {
    assert_eq!(
        err("c|securemode=2,_v=1,_v=1|"),
        ParseError::Duplicate {
            field: "clientId parameter"
        }
    );
}

#[test]
fn reject_duplicate_key_differing_only_in_whitespace() {
    assert_eq!(
        err("c|securemode=2, securemode =3|"),
        ParseError::Duplicate {
            field: "securemode"
        }
    );
}

#[test]
fn reject_auth_type_in_both_spellings() {
    assert_eq!(
        err("c|securemode=2,authType=register,authtype=register,random=r|"),
        ParseError::Duplicate { field: "authtype" }
    );
}

#[test]
fn reject_control_character_inside_a_value() {
    assert_eq!(
        err("c|securemode=2,lan=a\nb|"),
        ParseError::InvalidCharacter {
            field: "clientId parameter"
        }
    );
}

#[test]
fn reject_control_character_inside_a_key() {
    assert_eq!(
        err("c|securemode=2,l\u{7}an=x|"),
        ParseError::InvalidCharacter {
            field: "clientId parameter"
        }
    );
}

#[test]
fn accept_whitespace_around_keys_and_values() {
    let id = client_id("c|securemode=2,\n        signmethod=hmacsha256 ,\n        timestamp=42|")
        .unwrap();
    assert_eq!(
        (id.sign_method(), id.timestamp()),
        (SignMethod::HmacSha256, Some("42"))
    );
}

#[test]
fn reject_more_than_32_parameters() {
    let items: Vec<String> = (0..ConnectRequest::MAX_PARAMS)
        .map(|i| format!("k{i}=v"))
        .collect();
    let text = format!("c|securemode=2,{}|", items.join(","));
    assert_eq!(
        err(&text),
        ParseError::TooLong {
            field: "clientId parameters",
            max: ConnectRequest::MAX_PARAMS
        }
    );
}

#[test]
fn accept_unknown_keys_as_unsigned_extensions() {
    let id = client_id("c|securemode=2,_ss=1,ext=3,_v=sdk-c-4.2.0|").unwrap();
    assert_eq!(id.extensions().count(), 3);
}

// --- client id: known values ---

#[test]
fn reject_missing_securemode() {
    assert_eq!(
        err("c|signmethod=hmacsha1|"),
        ParseError::Missing {
            field: "securemode"
        }
    );
}

#[test]
fn reject_securemode_outside_the_list() {
    for mode in ["6", "9", "-3", "-1x", "", "127", "+2", "02", "-0-", " 2x"] {
        assert!(
            matches!(
                err(&format!("c|securemode={mode}|")),
                ParseError::Unsupported {
                    field: "securemode"
                } | ParseError::Malformed {
                    field: "securemode",
                    ..
                }
            ),
            "securemode={mode}"
        );
    }
}

#[test]
fn accept_every_listed_securemode() {
    for mode in [-2, -1, 0, 1, 2, 3, 4, 5, 7, 8] {
        assert_eq!(
            client_id(&format!("c|securemode={mode}|"))
                .unwrap()
                .secure_mode()
                .get(),
            mode
        );
    }
}

#[test]
fn reject_unknown_signmethod() {
    assert_eq!(
        err("c|securemode=2,signmethod=hmacsha512|"),
        ParseError::Unsupported {
            field: "signmethod"
        }
    );
}

#[test]
fn accept_signmethod_in_any_case_and_md5_when_absent() {
    assert_eq!(
        client_id("c|securemode=2,signmethod=HmacSHA1|")
            .unwrap()
            .sign_method(),
        SignMethod::HmacSha1
    );
    assert_eq!(
        client_id("c|securemode=2|").unwrap().sign_method(),
        SignMethod::HmacMd5
    );
}

#[test]
fn reject_non_decimal_timestamp() {
    for ts in ["", "12a", "-1", "1.5", "١٢"] {
        assert!(
            matches!(
                err(&format!("c|securemode=2,timestamp={ts}|")),
                ParseError::Malformed {
                    field: "timestamp",
                    ..
                }
            ),
            "{ts:?}"
        );
    }
}

#[test]
fn reject_timestamp_over_20_digits() {
    assert_eq!(
        err(&format!("c|securemode=2,timestamp={}|", "1".repeat(21))),
        ParseError::TooLong {
            field: "timestamp",
            max: 20
        }
    );
    assert!(client_id(&format!("c|securemode=2,timestamp={}|", "9".repeat(20))).is_ok());
}

/// `authtype=id2` (iTLS builds of the C SDKs, AliOS Things, Android LinkKit) and
/// `authtype=custom-ilop` (Living Platform SDK 1.6) are plain logins: they change nothing that
/// is signed.
#[test]
fn accept_an_auth_type_that_changes_nothing_signed_as_a_login() {
    for text in [
        "c|securemode=8,authtype=id2|",
        "c|securemode=2,authtype=custom-ilop|",
        "c|securemode=2,authType=something-new|",
    ] {
        assert_eq!(
            client_id(text).unwrap().kind(),
            ConnectKind::Login,
            "{text}"
        );
    }
}

#[test]
fn reject_registration_without_random() {
    assert_eq!(
        err("c|securemode=2,authType=register|"),
        ParseError::Missing { field: "random" }
    );
    assert_eq!(
        err("c|securemode=-2,authType=regnwl|"),
        ParseError::Missing { field: "random" }
    );
}

#[test]
fn reject_random_over_64_characters() {
    let text = format!(
        "c|securemode=2,authType=register,random={}|",
        "r".repeat(65)
    );
    assert_eq!(
        err(&text),
        ParseError::TooLong {
            field: "random",
            max: 64
        }
    );
}

// --- user name ---

#[test]
fn reject_username_over_128_bytes() {
    assert_eq!(
        parse_username(&"a".repeat(129)).unwrap_err(),
        ParseError::TooLong {
            field: "username",
            max: 128
        }
    );
}

#[test]
fn reject_username_without_ampersand() {
    assert!(matches!(
        parse_username("devicea1pk"),
        Err(ParseError::Malformed {
            field: "username",
            ..
        })
    ));
}

#[test]
fn reject_username_with_two_ampersands() {
    assert!(matches!(
        parse_username("dev1&pk&x"),
        Err(ParseError::Malformed {
            field: "username",
            ..
        })
    ));
}

#[test]
fn reject_username_in_product_first_order() {
    // `productKey&deviceName` fails because `-` is not allowed in a product key.
    assert!(parse_username("a1pk&dev-1").is_err());
}

#[test]
fn reject_device_name_shorter_than_4_or_longer_than_32() {
    assert_eq!(
        DeviceName::new("abc").unwrap_err(),
        ParseError::TooShort {
            field: "deviceName",
            min: 4
        }
    );
    assert_eq!(
        DeviceName::new(&"a".repeat(33)).unwrap_err(),
        ParseError::TooLong {
            field: "deviceName",
            max: 32
        }
    );
}

#[test]
fn reject_device_name_characters_outside_the_alphabet() {
    for bad in [
        "dev ice",
        "dev/ice",
        "dev&ice",
        "dev|ice",
        "dev,ice",
        "dev=ice",
        "dévice",
        "dev\u{0}ice",
    ] {
        assert_eq!(
            DeviceName::new(bad).unwrap_err(),
            ParseError::InvalidCharacter {
                field: "deviceName"
            },
            "{bad:?}"
        );
    }
}

#[test]
fn reject_product_key_empty_long_or_non_alphanumeric() {
    assert_eq!(
        ProductKey::new("").unwrap_err(),
        ParseError::TooShort {
            field: "productKey",
            min: 1
        }
    );
    assert_eq!(
        ProductKey::new(&"a".repeat(33)).unwrap_err(),
        ParseError::TooLong {
            field: "productKey",
            max: 32
        }
    );
    assert_eq!(
        ProductKey::new("a1_b").unwrap_err(),
        ParseError::InvalidCharacter {
            field: "productKey"
        }
    );
}

// --- password ---

fn connect(password: &str) -> Result<ConnectRequest<'_>, ParseError> {
    ConnectRequest::parse(
        "edge-box-17|securemode=3,signmethod=hmacmd5,timestamp=1711111111|",
        "edge&a2SHaReD0k1",
        password,
    )
}

#[test]
fn reject_password_over_256_bytes() {
    assert_eq!(
        connect(&"a".repeat(257)).unwrap_err(),
        ParseError::TooLong {
            field: "password",
            max: 256
        }
    );
}

#[test]
fn reject_caps_before_parsing_anything_else() {
    // A malformed client id and an oversized password: the cap is reported.
    let password = "a".repeat(300);
    let result = ConnectRequest::parse("no-block", "x", &password);
    assert_eq!(
        result.unwrap_err(),
        ParseError::TooLong {
            field: "password",
            max: 256
        }
    );
}

#[test]
fn reject_password_of_the_wrong_length_for_the_method() {
    let sha1_length = "a".repeat(40);
    assert!(matches!(
        connect(&sha1_length),
        Err(ParseError::Malformed {
            field: "password",
            ..
        })
    ));
}

#[test]
fn reject_non_hex_password() {
    let not_hex = format!("{}zz", &MD5_HEX[..30]);
    assert!(matches!(
        connect(&not_hex),
        Err(ParseError::Malformed {
            field: "password",
            ..
        })
    ));
}

#[test]
fn reject_password_with_whitespace() {
    let padded = format!(" {}", &MD5_HEX[1..]);
    assert!(matches!(
        connect(&padded),
        Err(ParseError::Malformed {
            field: "password",
            ..
        })
    ));
}

#[test]
fn accept_password_hex_in_either_case() {
    assert!(connect(MD5_HEX).is_ok());
    assert!(connect(&MD5_HEX.to_lowercase()).is_ok());
}

#[test]
fn reject_token_password_empty_spaced_or_over_64() {
    let parse = |p| ConnectRequest::parse("cid|securemode=-2,authType=connwl|", "dev1&pk1", p);
    assert!(matches!(
        parse(""),
        Err(ParseError::TooShort {
            field: "password",
            ..
        })
    ));
    assert!(matches!(
        parse("tok en"),
        Err(ParseError::InvalidCharacter { field: "password" })
    ));
    let long = "t".repeat(65);
    assert!(matches!(
        parse(&long),
        Err(ParseError::TooLong {
            field: "password",
            ..
        })
    ));
    assert!(parse("0f1e2d3c4b5a69788796a5b4c3d2e1f0").is_ok());
}

// --- secrets ---

#[test]
fn reject_secret_empty_over_64_whitespace_or_non_ascii() {
    assert!(matches!(
        DeviceSecret::new(""),
        Err(ParseError::TooShort {
            field: "deviceSecret",
            ..
        })
    ));
    assert!(matches!(
        ProductSecret::new(&"s".repeat(65)),
        Err(ParseError::TooLong {
            field: "productSecret",
            ..
        })
    ));
    assert!(matches!(
        DeviceToken::new("a b"),
        Err(ParseError::InvalidCharacter {
            field: "deviceToken"
        })
    ));
    assert!(matches!(
        DeviceSecret::new("sécret"),
        Err(ParseError::InvalidCharacter {
            field: "deviceSecret"
        })
    ));
    assert!(matches!(
        DeviceSecret::new("tab\there"),
        Err(ParseError::InvalidCharacter {
            field: "deviceSecret"
        })
    ));
}

// --- registration form ---

const FORM: &str = "productKey=a2SHaReD0k1&deviceName=shared-reg-01&random=BScWZyXmt3GwdCe&sign=fc962b02906b7aa4379ba688fe1a19f884fd88036b9ec51830cf446055932dd1&signMethod=hmacsha256";

fn form(body: &str) -> Result<RegisterForm<'_>, ParseError> {
    RegisterForm::parse(body.as_bytes())
}

#[test]
fn reject_form_over_4096_bytes() {
    let body = format!("{FORM}&pad={}", "x".repeat(RegisterForm::MAX_LEN));
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::TooLong {
            field: "form",
            max: 4096
        }
    );
}

#[test]
fn reject_bad_percent_escapes() {
    for bad in ["%zz", "%4", "%", "abc%g1"] {
        let body = FORM.replace("random=BScWZyXmt3GwdCe", &format!("random={bad}"));
        assert_eq!(
            form(&body).unwrap_err(),
            ParseError::Malformed {
                field: "random",
                expected: "valid percent-encoding"
            },
            "{bad}"
        );
    }
}

#[test]
fn reject_invalid_utf8_after_decoding() {
    let body = FORM.replace("random=BScWZyXmt3GwdCe", "random=%ff%fe");
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::InvalidCharacter { field: "random" }
    );
}

#[test]
fn reject_control_character_after_decoding() {
    let body = FORM.replace("random=BScWZyXmt3GwdCe", "random=ab%0Acd");
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::InvalidCharacter { field: "random" }
    );
}

#[test]
fn reject_raw_non_ascii_or_whitespace_bytes() {
    assert_eq!(
        form(&FORM.replace("BScWZyXmt3GwdCe", "BScWZ é")).unwrap_err(),
        ParseError::InvalidCharacter { field: "random" }
    );
}

#[test]
fn reject_duplicate_field() {
    let body = format!("{FORM}&random=again");
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::Duplicate { field: "random" }
    );
}

#[test]
fn reject_duplicate_field_spelled_with_escapes() {
    let body = format!("{FORM}&r%61ndom=again");
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::Duplicate { field: "random" }
    );
}

#[test]
fn reject_each_missing_field() {
    for field in ["productKey", "deviceName", "random", "sign", "signMethod"] {
        let body: Vec<&str> = FORM
            .split('&')
            .filter(|pair| !pair.starts_with(&format!("{field}=")))
            .collect();
        assert_eq!(
            form(&body.join("&")).unwrap_err(),
            ParseError::Missing { field },
            "{field}"
        );
    }
}

#[test]
fn reject_empty_pair_or_pair_without_equals() {
    assert!(matches!(
        form(&format!("{FORM}&&x=1")),
        Err(ParseError::Malformed { field: "form", .. })
    ));
    assert!(matches!(
        form(&format!("{FORM}&flag")),
        Err(ParseError::Malformed { field: "form", .. })
    ));
    assert!(matches!(
        form(&format!("{FORM}&")),
        Err(ParseError::Malformed { field: "form", .. })
    ));
}

#[test]
fn reject_more_than_16_pairs() {
    let extra: String = (0..RegisterForm::MAX_PAIRS)
        .map(|i| format!("&x{i}=1"))
        .collect();
    assert_eq!(
        form(&format!("{FORM}{extra}")).unwrap_err(),
        ParseError::TooLong {
            field: "form pairs",
            max: 16
        }
    );
}

#[test]
fn reject_random_empty_or_over_64() {
    assert!(matches!(
        form(&FORM.replace("random=BScWZyXmt3GwdCe", "random=")),
        Err(ParseError::TooShort {
            field: "random",
            ..
        })
    ));
    let long = FORM.replace("BScWZyXmt3GwdCe", &"r".repeat(65));
    assert!(matches!(
        form(&long),
        Err(ParseError::TooLong {
            field: "random",
            ..
        })
    ));
}

#[test]
fn reject_unknown_sign_method_in_form() {
    let body = FORM.replace("signMethod=hmacsha256", "signMethod=sha256");
    assert_eq!(
        form(&body).unwrap_err(),
        ParseError::Unsupported {
            field: "signMethod"
        }
    );
}

#[test]
fn reject_sign_of_the_wrong_length() {
    let body = FORM.replace("signMethod=hmacsha256", "signMethod=hmacsha1");
    assert!(matches!(
        form(&body),
        Err(ParseError::Malformed { field: "sign", .. })
    ));
}

#[test]
fn reject_invalid_identifiers_in_form() {
    assert!(matches!(
        form(&FORM.replace("deviceName=shared-reg-01", "deviceName=dev%26ice")),
        Err(ParseError::InvalidCharacter {
            field: "deviceName"
        })
    ));
    assert!(matches!(
        form(&FORM.replace("productKey=a2SHaReD0k1", "productKey=a2-")),
        Err(ParseError::InvalidCharacter {
            field: "productKey"
        })
    ));
}

#[test]
fn accept_unknown_fields_and_method_in_any_case() {
    let body = format!(
        "{}&version=default",
        FORM.replace("hmacsha256", "HmacSHA256")
    );
    assert_eq!(form(&body).unwrap().sign_method(), SignMethod::HmacSha256);
}

// --- registration reply (device side) ---

#[test]
fn reject_reply_over_cap_or_not_json() {
    assert!(matches!(
        RegisterReply::parse(&vec![b' '; RegisterReply::MAX_LEN + 1]),
        Err(ParseError::TooLong { field: "reply", .. })
    ));
    assert!(matches!(
        RegisterReply::parse(b"<html>"),
        Err(ParseError::Malformed { field: "reply", .. })
    ));
}

#[test]
fn reject_reply_with_unknown_top_level_field() {
    assert!(RegisterReply::parse(br#"{"code":460,"message":"x","extra":1}"#).is_err());
}

#[test]
fn reject_success_reply_without_data_or_with_invalid_secret() {
    assert_eq!(
        RegisterReply::parse(br#"{"code":200,"message":"success"}"#).unwrap_err(),
        ParseError::Missing { field: "data" }
    );
    let spaced = br#"{"code":200,"data":{"productKey":"a1","deviceName":"dev1","deviceSecret":"has space"},"message":"success"}"#;
    assert_eq!(
        RegisterReply::parse(spaced).unwrap_err(),
        ParseError::InvalidCharacter {
            field: "deviceSecret"
        }
    );
}

#[test]
fn reject_reply_message_with_control_characters() {
    assert!(RegisterReply::parse(b"{\"code\":460,\"message\":\"a\\u001b[31m\"}").is_err());
}

#[test]
fn accept_success_and_refusal_replies() {
    let ok = br#"{"code":200,"data":{"productKey":"a1","deviceName":"dev1","deviceSecret":"s3cret"},"message":"success"}"#;
    assert!(matches!(
        RegisterReply::parse(ok),
        Ok(RegisterReply::Issued { .. })
    ));
    let refused =
        RegisterReply::parse(br#"{"code":6602,"message":"device secret already issued"}"#).unwrap();
    assert!(matches!(refused, RegisterReply::Refused { code: 6602, .. }));
}

// --- freshness ---

#[test]
fn reject_stale_missing_or_unrepresentable_timestamps_under_a_window() {
    let window = Freshness::Window { max_skew_secs: 60 };
    let now = UnixMillis(1_700_000_000_000);
    assert_eq!(window.check(None, now), Err(VerifyError::MissingTimestamp));
    assert_eq!(
        window.check(Some("1699999900"), now),
        Err(VerifyError::Stale)
    );
    assert_eq!(
        window.check(Some("1700000061000"), now),
        Err(VerifyError::Stale)
    );
    assert_eq!(
        window.check(Some("99999999999999999999"), now),
        Err(VerifyError::Stale)
    );
    assert_eq!(window.check(Some("1699999940"), now), Ok(()));
    assert_eq!(window.check(Some("1700000060000"), now), Ok(()));
}

#[test]
fn reject_nothing_without_a_window() {
    assert_eq!(Freshness::Unchecked.check(None, UnixMillis(0)), Ok(()));
    assert_eq!(
        Freshness::Unchecked.check(Some("2524608000000"), UnixMillis(0)),
        Ok(())
    );
}
